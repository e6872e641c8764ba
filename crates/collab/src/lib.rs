//! Collaborative item-item models learned from ratings: co-rating cosine (item-kNN) and EASE.
