//! Placeholder: the kernel capture (being written).
