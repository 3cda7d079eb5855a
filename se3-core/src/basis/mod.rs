//! Equivariant kernel bases, radial bases and edge encodings.
