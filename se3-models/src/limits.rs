//! Upper bounds on what a config, checkpoint or input file may declare.
//!
//! A file from a stranger must not make se3 allocate or loop without bound. Tensor sizes are
//! bounded by the file itself (a safetensors header's shapes and offsets are checked against the
//! file length, with overflow-checked shape products, before any tensor is read); the sizes a
//! `config.json` declares are not, so every size field is checked against these bounds before
//! anything is derived from it, giving `Error::TooLarge` naming the field. The bounds are far above
//! every published model (the reference models use dim <= 64, depth <= 6, degree <= 3).

use crate::Error;

/// Highest degree of a fiber or of the kernel basis: the harmonics of se3-core.
pub const MAX_DEGREE: usize = se3_core::so3::L_MAX;
/// Most channels of one degree, and most of any width (`dim`, `heads * dim_head`, `edge_dim`,
/// hidden widths).
pub const MAX_CHANNELS: usize = 1 << 16;
/// Most blocks of a trunk (`depth`, `num_conv_layers`, fibers of a TFN stack).
pub const MAX_DEPTH: usize = 1 << 10;
/// Most rows of an embedding table (`num_tokens`, `num_positions`, `num_edge_tokens`).
pub const MAX_EMBEDDING_ROWS: usize = 1 << 24;
/// Most Fourier scales `2^k` of a distance (2^64 already overflows any float32 distance).
pub const MAX_FOURIER_FEATURES: usize = 64;
/// Most bond distances labelled by `num_adj_degrees` (each one is a boolean matrix product).
pub const MAX_ADJ_DEGREES: usize = 64;
/// Largest `config.json` or Q_J sign table read (bytes); configs are a few kilobytes.
pub const MAX_TEXT_FILE_BYTES: u64 = 16 << 20;

/// `TooLarge` if `found > limit`.
///
/// # Errors
/// `TooLarge` naming `field`.
pub fn at_most(field: &'static str, found: usize, limit: usize) -> Result<(), Error> {
    if found > limit {
        return Err(Error::TooLarge {
            field,
            limit,
            found,
        });
    }
    Ok(())
}

/// As [`at_most`] for an optional size (None passes).
///
/// # Errors
/// `TooLarge` naming `field`.
pub fn at_most_opt(field: &'static str, found: Option<usize>, limit: usize) -> Result<(), Error> {
    found.map_or(Ok(()), |f| at_most(field, f, limit))
}

/// Reads a text file (config, sign table) of at most [`MAX_TEXT_FILE_BYTES`], checking the length
/// before reading: a path to a huge or endless file (`/dev/zero`) is refused, not read.
///
/// # Errors
/// `Io` if the file cannot be opened or read or is not UTF-8, `FileTooLarge` past the bound.
pub fn read_text_file(path: &std::path::Path) -> Result<String, Error> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    // one byte past the bound tells a file at the bound from a longer one without reading it all
    file.take(MAX_TEXT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_TEXT_FILE_BYTES {
        return Err(Error::FileTooLarge {
            path: path.display().to_string(),
            limit: MAX_TEXT_FILE_BYTES,
        });
    }
    Ok(text)
}
