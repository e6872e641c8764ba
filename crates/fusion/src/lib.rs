//! Fusion stage: blends the query embedding with the user's (and companions') profile.
