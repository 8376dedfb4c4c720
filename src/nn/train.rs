//! Training and evaluation loops (placeholder, filled next).
