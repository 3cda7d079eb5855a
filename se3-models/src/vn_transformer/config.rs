//! The constructor kwargs of VN-transformer 0.1.0's `VNTransformer`, with its defaults.

use serde::{Deserialize, Serialize};

use crate::model_file::check_known_keys;
use crate::Error;

fn d_dim_head() -> usize {
    64
}
fn d_heads() -> usize {
    8
}
fn d_dim_coor() -> usize {
    3
}
fn d_true() -> bool {
    true
}

/// Every constructor kwarg of `VNTransformer` (VN-transformer 0.1.0), defaults as the library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnTransformerConfig {
    /// Channels of the VN features.
    pub dim: usize,
    /// Number of encoder layers (attention + feed-forward, post-norm residuals).
    pub depth: usize,
    /// Size of the token embedding (`nn.Embedding(num_tokens, dim)`) for integer `feats`.
    #[serde(default)]
    pub num_tokens: Option<usize>,
    /// Width `F` of the invariant features concatenated to the coordinates (`None` = 0).
    #[serde(default)]
    pub dim_feat: Option<usize>,
    /// Channels per attention head.
    #[serde(default = "d_dim_head")]
    pub dim_head: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub heads: usize,
    /// Coordinate width; se3 takes 3.
    #[serde(default = "d_dim_coor")]
    pub dim_coor: usize,
    /// Project the `dim` channels to one at the output (`VNLayerNorm` + `VNLinear(dim, 1)`).
    #[serde(default = "d_true")]
    pub reduce_dim_out: bool,
    /// Length of the normalised VN-linear biases (biases exist only if positive).
    #[serde(default)]
    pub bias_epsilon: f64,
    /// Attention logits from negative squared distances (ties `to_k` to `to_q`).
    #[serde(default)]
    pub l2_dist_attn: bool,
    /// PyTorch's fused attention kernel: the same softmax attention, except that a node whose
    /// keys are all masked gets a zero attention output (torch's `scaled_dot_product_attention`)
    /// instead of the uniform average of the library's own path.
    #[serde(default)]
    pub flash_attn: bool,
    /// Subtract the coordinates' mean (over batch and nodes) and add it back to the output.
    #[serde(default)]
    pub translation_equivariance: bool,
    /// Subtract the coordinates' mean (over batch and nodes), not added back.
    #[serde(default)]
    pub translation_invariant: bool,
}

/// The kwargs `VNTransformer.__init__` accepts.
pub const KWARGS: &[&str] = &[
    "dim",
    "depth",
    "num_tokens",
    "dim_feat",
    "dim_head",
    "heads",
    "dim_coor",
    "reduce_dim_out",
    "bias_epsilon",
    "l2_dist_attn",
    "flash_attn",
    "translation_equivariance",
    "translation_invariant",
];

impl VnTransformerConfig {
    /// Parses and validates constructor kwargs.
    ///
    /// # Errors
    /// `UnknownKwarg`, `ConfigParse` (missing `dim`/`depth`, wrong types), `InvalidConfig` for
    /// what the library asserts against (`l2_dist_attn` with `flash_attn`, both translation
    /// options) and for what se3 does not take (`dim_coor` other than 3; zero `dim`, `heads`,
    /// `dim_head`; a non-finite `bias_epsilon`).
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, Error> {
        check_known_keys("VNTransformer", kwargs, KWARGS)?;
        let cfg: Self =
            serde_json::from_value(kwargs.clone()).map_err(|source| Error::ConfigParse {
                path: "constructor_kwargs".into(),
                source,
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |field, expected, found: String| {
            Err(Error::InvalidConfig {
                field,
                expected,
                found,
            })
        };
        if self.l2_dist_attn && self.flash_attn {
            return bad(
                "flash_attn",
                "false with l2_dist_attn (the library asserts they are incompatible)",
                "true".into(),
            );
        }
        if self.translation_equivariance && self.translation_invariant {
            return bad(
                "translation_invariant",
                "false with translation_equivariance (the library asserts at most one)",
                "true".into(),
            );
        }
        if self.dim_coor != 3 {
            return bad(
                "dim_coor",
                "3 (se3 takes 3-d coordinates)",
                self.dim_coor.to_string(),
            );
        }
        for (field, v) in [
            ("dim", self.dim),
            ("heads", self.heads),
            ("dim_head", self.dim_head),
        ] {
            if v == 0 {
                return bad(field, "a positive size", "0".into());
            }
        }
        if !self.bias_epsilon.is_finite() {
            return bad(
                "bias_epsilon",
                "a finite number",
                self.bias_epsilon.to_string(),
            );
        }
        Ok(())
    }

    /// The invariant feature width `F` (0 without features).
    pub fn feat_width(&self) -> usize {
        self.dim_feat.unwrap_or(0)
    }

    /// The bias length used by the VN linear layers: biases exist only for `bias_epsilon > 0`.
    pub fn effective_bias_epsilon(&self) -> f64 {
        self.bias_epsilon.max(0.0)
    }

    /// Hidden width of the feed-forward blocks (`ff_mult = 4`, fixed by `VNTransformer`).
    pub fn ff_inner(&self) -> usize {
        self.dim * 4
    }
}
