//! Execution of luminal graphs: sessions and compiler passes.
