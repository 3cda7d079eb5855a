//! Graph operators for point clouds, one op a folder.
