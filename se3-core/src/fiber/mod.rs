//! Fibers: which degrees a feature has and how many channels each, at the type level and at
//! run time.
