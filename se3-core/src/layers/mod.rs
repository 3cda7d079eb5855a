//! Equivariant layers, generic over fibers.
