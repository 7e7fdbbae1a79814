//! `decide()`: the pure choice of which tasks get a worker now.
