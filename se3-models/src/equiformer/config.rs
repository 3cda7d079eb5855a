//! Constructor kwargs of equiformer-pytorch 0.5.4's `Equiformer`, parsed from `config.json`.

use serde::Deserialize;

use crate::model_file::check_known_keys;
use crate::se3_transformer::config::py_num;
use crate::Error;

/// A per-degree size: one number for every degree, or a tuple with one entry per degree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PerDegree {
    /// The same value for every degree (`cast_tuple`).
    One(usize),
    /// One value per degree.
    Each(Vec<usize>),
}

impl PerDegree {
    /// The values for `n` degrees.
    ///
    /// # Errors
    /// `InvalidConfig` naming `field` if a tuple does not have `n` entries or holds a zero.
    pub fn resolve(&self, field: &'static str, n: usize) -> Result<Vec<usize>, Error> {
        let v = match self {
            PerDegree::One(c) => vec![*c; n],
            PerDegree::Each(v) => v.clone(),
        };
        if v.len() != n {
            return Err(Error::InvalidConfig {
                field,
                expected: "one entry per degree (the library asserts it)",
                found: format!("{} entries for {n} degrees", v.len()),
            });
        }
        if v.contains(&0) {
            return Err(Error::InvalidConfig {
                field,
                expected: "positive sizes",
                found: format!("{v:?}"),
            });
        }
        Ok(v)
    }
}

fn d_two() -> usize {
    2
}
fn d_one() -> usize {
    1
}
fn d_heads() -> PerDegree {
    PerDegree::One(8)
}
fn d_dim_head() -> PerDegree {
    PerDegree::One(24)
}
fn d_radius() -> f64 {
    1e5
}
fn d_hidden() -> usize {
    64
}
fn d_true() -> bool {
    true
}
fn d_four() -> usize {
    4
}
fn d_half() -> f64 {
    0.5
}
fn d_slope() -> f64 {
    0.1
}
fn d_eight() -> usize {
    8
}

/// Every constructor kwarg of `Equiformer` (and those it forwards to its attention class).
pub const EQUIFORMER_KWARGS: &[&str] = &[
    "dim",
    "dim_in",
    "num_degrees",
    "input_degrees",
    "heads",
    "dim_head",
    "depth",
    "valid_radius",
    "num_neighbors",
    "reduce_dim_out",
    "radial_hidden_dim",
    "num_tokens",
    "num_positions",
    "num_edge_tokens",
    "edge_dim",
    "attend_self",
    "splits",
    "linear_out",
    "embedding_grad_frac",
    "single_headed_kv",
    "ff_include_htype_norms",
    "l2_dist_attention",
    "reversible",
    "attend_sparse_neighbors",
    "gate_attn_head_outputs",
    "num_adj_degrees_embed",
    "adj_dim",
    "max_sparse_neighbors",
    "attn_leakyrelu_slope",
    "attn_hidden_dim_mult",
    "linear_attn_dim_head",
    "num_linear_attn_heads",
    "init_out_zero",
];

/// `Equiformer(**kwargs)` of equiformer-pytorch 0.5.4 (defaults as the library).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EquiformerConfig {
    /// Hidden channels per degree.
    pub dim: PerDegree,
    /// Input channels per input degree (default `(dim[0],)`).
    #[serde(default)]
    pub dim_in: Option<PerDegree>,
    /// Hidden degrees `0..num_degrees`.
    #[serde(default = "d_two")]
    pub num_degrees: usize,
    /// Input degrees `0..input_degrees`.
    #[serde(default = "d_one")]
    pub input_degrees: usize,
    /// Attention heads per degree.
    #[serde(default = "d_heads")]
    pub heads: PerDegree,
    /// Channels per head per degree.
    #[serde(default = "d_dim_head")]
    pub dim_head: PerDegree,
    /// Attention + feed-forward blocks.
    #[serde(default = "d_two")]
    pub depth: usize,
    /// Neighbours farther than this are masked.
    #[serde(default = "d_radius", deserialize_with = "py_num::float")]
    pub valid_radius: f64,
    /// Nearest neighbours per node (`None` = infinity).
    #[serde(default, deserialize_with = "py_num::count_or_inf")]
    pub num_neighbors: Option<usize>,
    /// Project every output degree to one channel.
    #[serde(default)]
    pub reduce_dim_out: bool,
    /// Hidden width of the radial networks.
    #[serde(default = "d_hidden")]
    pub radial_hidden_dim: usize,
    /// Node token vocabulary (embedding of `inputs`).
    #[serde(default)]
    pub num_tokens: Option<usize>,
    /// Learned positional embedding of the node index.
    #[serde(default)]
    pub num_positions: Option<usize>,
    /// Edge token vocabulary (embedding of `edges` to `edge_dim`).
    #[serde(default)]
    pub num_edge_tokens: Option<usize>,
    /// Edge feature width.
    #[serde(default)]
    pub edge_dim: Option<usize>,
    /// Every node attends to itself (the library crashes without it).
    #[serde(default = "d_true")]
    pub attend_self: bool,
    /// Memory chunking (no effect on values).
    #[serde(default = "d_four")]
    pub splits: usize,
    /// Output projection linear (`true`) or a feed-forward block.
    #[serde(default = "d_true")]
    pub linear_out: bool,
    /// Gradient scaling of the embeddings (identity in the forward pass).
    #[serde(default = "d_half", deserialize_with = "py_num::float")]
    pub embedding_grad_frac: f64,
    /// One key/value head shared by the query heads.
    #[serde(default)]
    pub single_headed_kv: bool,
    /// Feed-forward degree 0 also sees the norms of the higher degrees.
    #[serde(default)]
    pub ff_include_htype_norms: bool,
    /// L2-distance attention (`true`) or MLP attention.
    #[serde(default = "d_true")]
    pub l2_dist_attention: bool,
    /// Reversible blocks (same forward values, two half-streams).
    #[serde(default)]
    pub reversible: bool,
    /// Bonded neighbours (`adj_mat`) are always attended.
    #[serde(default)]
    pub attend_sparse_neighbors: bool,
    /// Sigmoid gate per attention head.
    #[serde(default = "d_true")]
    pub gate_attn_head_outputs: bool,
    /// Bond-distance labels 1..=k from `adj_mat`.
    #[serde(default)]
    pub num_adj_degrees_embed: Option<usize>,
    /// Width of the bond-distance embedding (see the module doc).
    #[serde(default)]
    pub adj_dim: usize,
    /// At most this many bonded neighbours (`None` = infinity; fewer than the bonds means a
    /// random choice, which se3 rejects).
    #[serde(default, deserialize_with = "py_num::count_or_inf")]
    pub max_sparse_neighbors: Option<usize>,
    /// MLP attention: LeakyReLU slope.
    #[serde(default = "d_slope", deserialize_with = "py_num::float")]
    pub attn_leakyrelu_slope: f64,
    /// MLP attention: logit hidden channels per head.
    #[serde(default = "d_four")]
    pub attn_hidden_dim_mult: usize,
    /// Linear-attention head width.
    #[serde(default = "d_eight")]
    pub linear_attn_dim_head: usize,
    /// Linear-attention heads (Taylor-series attention of degree 0).
    #[serde(default)]
    pub num_linear_attn_heads: usize,
    /// Zero-initialised output projections (initialisation only).
    #[serde(default = "d_true")]
    pub init_out_zero: bool,
}

/// The resolved sizes of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EquiformerShape {
    /// Hidden channels per degree.
    pub dim: Vec<usize>,
    /// Input channels per input degree.
    pub dim_in: Vec<usize>,
    /// Heads per degree.
    pub heads: Vec<usize>,
    /// Channels per head per degree.
    pub dim_head: Vec<usize>,
    /// Edge feature width seen by the radial networks (edges + bond-distance embedding).
    pub edge_dim: usize,
}

impl EquiformerConfig {
    /// Parses and validates constructor kwargs.
    ///
    /// # Errors
    /// `UnknownKwarg`, `ConfigParse`, and `InvalidConfig` for configs the library rejects
    /// (assertions, crashes) or se3 does not run (see [`EquiformerConfig::shape`]).
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, Error> {
        check_known_keys("Equiformer", kwargs, EQUIFORMER_KWARGS)?;
        let cfg: Self =
            serde_json::from_value(kwargs.clone()).map_err(|source| Error::ConfigParse {
                path: "constructor_kwargs".into(),
                source,
            })?;
        if let Some(map) = kwargs.as_object() {
            if cfg.l2_dist_attention {
                for k in ["attn_leakyrelu_slope", "attn_hidden_dim_mult"] {
                    if map.contains_key(k) {
                        return Err(Error::InvalidConfig {
                            field: "l2_dist_attention",
                            expected: "MLP attention (l2_dist_attention = false) for this keyword; L2DistAttention rejects it",
                            found: k.to_string(),
                        });
                    }
                }
            }
        }
        cfg.shape()?;
        Ok(cfg)
    }

    /// Resolved sizes.
    ///
    /// # Errors
    /// `InvalidConfig` for: tuples of the wrong length or zero sizes, `num_degrees` or
    /// `input_degrees` of 0, `num_edge_tokens` without `edge_dim`, `num_adj_degrees_embed`
    /// of 0, `attend_self = false` (the library's attention then calls a missing
    /// self-interaction). `depth` of 0 is allowed.
    pub fn shape(&self) -> Result<EquiformerShape, Error> {
        let bad = |field, expected: &'static str, found: String| {
            Err(Error::InvalidConfig {
                field,
                expected,
                found,
            })
        };
        if self.num_degrees == 0 {
            return bad("num_degrees", "at least 1", "0".into());
        }
        if self.input_degrees == 0 || self.input_degrees > self.num_degrees {
            return bad(
                "input_degrees",
                "1..=num_degrees",
                self.input_degrees.to_string(),
            );
        }
        let dim = self.dim.resolve("dim", self.num_degrees)?;
        let dim_in = match &self.dim_in {
            Some(d) => d.resolve("dim_in", self.input_degrees)?,
            None if self.input_degrees == 1 => vec![dim[0]],
            None => {
                return bad(
                    "dim_in",
                    "one entry per input degree (the default (dim[0],) has one)",
                    format!("none for {} input degrees", self.input_degrees),
                )
            }
        };
        let heads = self.heads.resolve("heads", self.num_degrees)?;
        let dim_head = self.dim_head.resolve("dim_head", self.num_degrees)?;
        if self.num_edge_tokens.is_some() && self.edge_dim.is_none() {
            return bad(
                "edge_dim",
                "a width when num_edge_tokens is set (the library asserts it)",
                "none".into(),
            );
        }
        if self.num_adj_degrees_embed == Some(0) {
            return bad("num_adj_degrees_embed", "at least 1", "0".into());
        }
        if !self.attend_self {
            return bad(
                "attend_self",
                "true (equiformer-pytorch 0.5.4 crashes in forward without the self-interaction)",
                "false".into(),
            );
        }
        if self.num_linear_attn_heads > 0 && self.linear_attn_dim_head == 0 {
            return bad(
                "linear_attn_dim_head",
                "a positive width when num_linear_attn_heads > 0",
                "0".into(),
            );
        }
        if self.radial_hidden_dim == 0 || self.attn_hidden_dim_mult == 0 {
            return bad(
                "radial_hidden_dim",
                "positive radial and attention hidden widths",
                format!("{} / {}", self.radial_hidden_dim, self.attn_hidden_dim_mult),
            );
        }
        let edge_dim = self.edge_dim.unwrap_or(0)
            + if self.num_adj_degrees_embed.is_some() {
                self.adj_dim
            } else {
                0
            };
        Ok(EquiformerShape {
            dim,
            dim_in,
            heads,
            dim_head,
            edge_dim,
        })
    }

    /// Whether edge features enter the radial networks (`edge_dim > 0`).
    pub fn has_edges(&self) -> bool {
        self.edge_dim.is_some_and(|d| d > 0)
    }

    /// Whether the bond-distance labels are embedded (`num_adj_degrees_embed` and `adj_dim > 0`).
    pub fn has_adj_embedding(&self) -> bool {
        self.num_adj_degrees_embed.is_some() && self.adj_dim > 0
    }
}
