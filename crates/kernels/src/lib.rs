//! CUDA kernels (sources and committed PTX) and the CUDA device, behind the cuda feature.
