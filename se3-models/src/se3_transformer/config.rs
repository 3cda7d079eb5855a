//! The constructor kwargs of se3-transformer-pytorch 0.9's `SE3Transformer`, with its defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model_file::{check_known_keys, parse_fiber_dict};
use crate::Error;

/// A channel count, the same for every degree or given per degree (a Python tuple).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    /// One channel count for every degree.
    One(usize),
    /// Channel count of degree 0, 1, ...
    PerDegree(Vec<usize>),
}

impl DimSpec {
    /// Channels of `degree` for a fiber of `num_degrees` degrees (`Fiber.create`).
    fn channels(&self, degree: usize) -> Option<usize> {
        match self {
            Self::One(c) => Some(*c),
            Self::PerDegree(v) => v.get(degree).copied(),
        }
    }
}

fn d_heads() -> usize {
    8
}
fn d_dim_head() -> usize {
    24
}
fn d_depth() -> usize {
    2
}
fn d_one() -> usize {
    1
}
fn d_output_degrees() -> Option<usize> {
    Some(1)
}
fn d_radius() -> f64 {
    1e5
}
fn d_true() -> bool {
    true
}
fn d_four() -> usize {
    4
}
fn d_egnn_hidden() -> usize {
    32
}

/// Every constructor kwarg of `SE3Transformer` (se3-transformer-pytorch 0.9), defaults as the library.
///
/// `num_neighbors` and `max_sparse_neighbors` default to infinity in Python; here `None` (JSON `null` or
/// absent) means infinity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Se3TransformerConfig {
    /// Channels of every hidden degree (and of inputs/outputs unless `dim_in`/`dim_out`).
    pub dim: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub heads: usize,
    /// Channels per head.
    #[serde(default = "d_dim_head")]
    pub dim_head: usize,
    /// Attention + feed-forward blocks (or EGNN layers).
    #[serde(default = "d_depth")]
    pub depth: usize,
    /// Input degrees `0..input_degrees` (>1: feats is a per-degree dict).
    #[serde(default = "d_one")]
    pub input_degrees: usize,
    /// Hidden degrees `0..num_degrees`; also sets the kernel basis (`num_degrees - 1`).
    #[serde(default)]
    pub num_degrees: Option<usize>,
    /// Output degrees `0..output_degrees` of `conv_out` (`None`: no `conv_out`).
    #[serde(default = "d_output_degrees")]
    pub output_degrees: Option<usize>,
    /// Neighbours farther than this (after masking) are invalid (`Infinity` or `"inf"` allowed).
    #[serde(
        default = "d_radius",
        deserialize_with = "py_num::float",
        serialize_with = "py_num::ser_float"
    )]
    pub valid_radius: f64,
    /// Final LinearSE3 to one channel per degree, squeezed.
    #[serde(default)]
    pub reduce_dim_out: bool,
    /// Embed int64 node tokens (`token_emb`).
    #[serde(default)]
    pub num_tokens: Option<usize>,
    /// Learned absolute position embedding added to type-0 feats (`pos_emb`).
    #[serde(default)]
    pub num_positions: Option<usize>,
    /// Embed int64 edge types (`edge_emb`, width `edge_dim`).
    #[serde(default)]
    pub num_edge_tokens: Option<usize>,
    /// Edge feature width fed to every radial network.
    #[serde(default)]
    pub edge_dim: Option<usize>,
    /// Reversible trunk (same forward values up to the m-axis duplication quirk, CONVENTIONS 2.8).
    #[serde(default)]
    pub reversible: bool,
    /// Keys/values of the node itself join the neighbours.
    #[serde(default = "d_true")]
    pub attend_self: bool,
    /// Learned null key/value slot per degree.
    #[serde(default)]
    pub use_null_kv: bool,
    /// Gradients through the basis only; no effect on forward values. [`Se3TransformerNet`]
    /// builds relative positions, radial input and kernel basis from the coordinates in its
    /// graph whatever this says, so its coordinate gradients are the true derivative.
    ///
    /// [`Se3TransformerNet`]: crate::se3_transformer::Se3TransformerNet
    #[serde(default)]
    pub differentiable_coors: bool,
    /// Fourier-encode the distance before the radial networks.
    #[serde(default)]
    pub fourier_encode_dist: bool,
    /// Number of Fourier scales `2^k` of the distance.
    #[serde(default = "d_four")]
    pub rel_dist_num_fourier_features: usize,
    /// Nearest neighbours by distance (`None` = infinity; 0 = bonded only).
    #[serde(default, deserialize_with = "py_num::count_or_inf")]
    pub num_neighbors: Option<usize>,
    /// Bonded neighbours (`adj_mat`) are ranked first.
    #[serde(default)]
    pub attend_sparse_neighbors: bool,
    /// Label pairs by bond distance 1..k and embed the label (`adj_dim`).
    #[serde(default)]
    pub num_adj_degrees: Option<usize>,
    /// Width of the bond-distance embedding.
    #[serde(default)]
    pub adj_dim: usize,
    /// Cap on bonded neighbours (`None` = infinity; below the bond count bonds are subsampled).
    #[serde(default, deserialize_with = "py_num::count_or_inf")]
    pub max_sparse_neighbors: Option<usize>,
    /// Input channels (per degree with a list).
    #[serde(default)]
    pub dim_in: Option<DimSpec>,
    /// Output channels (per degree with a list).
    #[serde(default)]
    pub dim_out: Option<DimSpec>,
    /// NormSE3 with identity nonlinearity after `conv_out`.
    #[serde(default)]
    pub norm_out: bool,
    /// Extra NormSE3 + ConvSE3 layers before the trunk.
    #[serde(default)]
    pub num_conv_layers: usize,
    /// Node i only sees j < i (needs `attend_self`).
    #[serde(default)]
    pub causal: bool,
    /// Memory chunking of the library; no effect on values.
    #[serde(default = "d_four")]
    pub splits: usize,
    /// Width of global features that join degree-0 keys/values.
    #[serde(default)]
    pub global_feats_dim: Option<usize>,
    /// Keys by LinearSE3 of the neighbour instead of a ConvSE3.
    #[serde(default)]
    pub linear_proj_keys: bool,
    /// One key/value head shared by all query heads.
    #[serde(default)]
    pub one_headed_key_values: bool,
    /// Keys are the values.
    #[serde(default)]
    pub tie_key_values: bool,
    /// Rotary embedding of node indices on degree-0 q/k/v.
    #[serde(default)]
    pub rotary_position: bool,
    /// Rotary embedding of `100 |r_ij|` (float32) on degree-0 k/v.
    #[serde(default)]
    pub rotary_rel_dist: bool,
    /// NormSE3 scales computed from the norms (`w_gate`).
    #[serde(default)]
    pub norm_gated_scale: bool,
    /// EGNN trunk instead of attention (ignores `output_degrees`).
    #[serde(default)]
    pub use_egnn: bool,
    /// Message width of the EGNN layers.
    #[serde(default = "d_egnn_hidden")]
    pub egnn_hidden_dim: usize,
    /// Clamp of the EGNN higher-degree update weights.
    #[serde(
        default,
        deserialize_with = "py_num::opt_float",
        serialize_with = "py_num::ser_opt_float"
    )]
    pub egnn_weights_clamp_value: Option<f64>,
    /// FeedForwardBlockSE3 after every EGNN layer.
    #[serde(default)]
    pub egnn_feedforward: bool,
    /// Hidden fiber `{"degree": channels}` (degrees taken in ascending order).
    #[serde(default)]
    pub hidden_fiber_dict: Option<BTreeMap<String, usize>>,
    /// Output fiber `{"degree": channels}`.
    #[serde(default)]
    pub out_fiber_dict: Option<BTreeMap<String, usize>>,
}

/// Numbers as Python writes them: `float('inf')` in the library's defaults comes out of `json.dump` as
/// `Infinity` (turned into the string `"Infinity"` by [`crate::model_file::python_json_to_strict`]),
/// and counts may be written as integral floats (`8.0`).
pub(crate) mod py_num {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(u64),
        Float(f64),
        Text(String),
    }

    fn to_f64<E: serde::de::Error>(v: Num) -> Result<f64, E> {
        match v {
            Num::Int(i) => Ok(i as f64),
            Num::Float(f) => Ok(f),
            Num::Text(t) => match t.as_str() {
                "Infinity" | "inf" => Ok(f64::INFINITY),
                "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
                "NaN" | "nan" => Ok(f64::NAN),
                other => Err(E::custom(format!("expected a number, found \"{other}\""))),
            },
        }
    }

    /// A count, or infinity (`None`): null, `Infinity`, `"inf"`, an integer or an integral float.
    pub(crate) fn count_or_inf<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        let Some(v) = Option::<Num>::deserialize(d)? else {
            return Ok(None);
        };
        if let Num::Int(i) = v {
            return usize::try_from(i).map(Some).map_err(D::Error::custom);
        }
        let f = to_f64::<D::Error>(v)?;
        if f == f64::INFINITY {
            Ok(None)
        } else if f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(53) {
            Ok(Some(f as usize))
        } else {
            Err(D::Error::custom(format!(
                "expected a non-negative count or infinity, found {f}"
            )))
        }
    }

    /// A float, `Infinity`/`"inf"` included.
    pub(crate) fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        to_f64(Num::deserialize(d)?)
    }

    /// An optional float, `Infinity`/`"inf"` included.
    pub(crate) fn opt_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Num>::deserialize(d)?.map(to_f64).transpose()
    }

    /// Writes a non-finite float as the string `"Infinity"` / `"-Infinity"` / `"NaN"`.
    pub(crate) fn ser_float<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }

    /// As [`ser_float`], None as null.
    pub(crate) fn ser_opt_float<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(f) => ser_float(f, s),
            None => s.serialize_none(),
        }
    }
}

/// Names of every constructor kwarg, for `UnknownKwarg`.
pub const SE3T_KWARGS: &[&str] = &[
    "dim",
    "heads",
    "dim_head",
    "depth",
    "input_degrees",
    "num_degrees",
    "output_degrees",
    "valid_radius",
    "reduce_dim_out",
    "num_tokens",
    "num_positions",
    "num_edge_tokens",
    "edge_dim",
    "reversible",
    "attend_self",
    "use_null_kv",
    "differentiable_coors",
    "fourier_encode_dist",
    "rel_dist_num_fourier_features",
    "num_neighbors",
    "attend_sparse_neighbors",
    "num_adj_degrees",
    "adj_dim",
    "max_sparse_neighbors",
    "dim_in",
    "dim_out",
    "norm_out",
    "num_conv_layers",
    "causal",
    "splits",
    "global_feats_dim",
    "linear_proj_keys",
    "one_headed_key_values",
    "tie_key_values",
    "rotary_position",
    "rotary_rel_dist",
    "norm_gated_scale",
    "use_egnn",
    "egnn_hidden_dim",
    "egnn_weights_clamp_value",
    "egnn_feedforward",
    "hidden_fiber_dict",
    "out_fiber_dict",
];

/// The forward literals of `SE3Transformer.forward`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Se3TransformerForward {
    /// Return only this degree.
    #[serde(default)]
    pub return_type: Option<usize>,
    /// Masked mean over nodes.
    #[serde(default)]
    pub return_pooled: bool,
}

/// A list of (degree, channels), ascending degrees.
pub type FiberDims = Vec<(usize, usize)>;

/// The fibers and sizes derived from a validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Se3TransformerShape {
    /// Input fiber (degrees `0..input_degrees`).
    pub fiber_in: FiberDims,
    /// Hidden fiber of the trunk.
    pub fiber_hidden: FiberDims,
    /// Output fiber of `conv_out` (absent with `use_egnn` or `output_degrees = None`).
    pub fiber_out: Option<FiberDims>,
    /// Highest degree of the kernel basis (`num_degrees - 1`).
    pub max_degree: usize,
    /// Edge feature width fed to radial networks besides the distance (edge embedding + adjacency
    /// embedding), before Fourier features.
    pub edge_dim: usize,
    /// `output_degrees` after `out_fiber_dict` (`max degree + 1`) and `use_egnn` (None).
    pub output_degrees: Option<usize>,
}

fn invalid(field: &'static str, expected: &'static str, found: impl ToString) -> Error {
    Error::InvalidConfig {
        field,
        expected,
        found: found.to_string(),
    }
}

/// `dim` may be a tuple in the library (`Fiber.create` takes per-degree channels), where it is the
/// default of `dim_in`, `dim_out` and (with `num_degrees`) of the hidden fiber, which zip it with
/// `range(num_degrees)` (a shorter tuple gives fewer degrees). The kwargs are rewritten into that
/// explicit form with `dim` its first entry; token and position embeddings need an integer `dim`.
fn tuple_dim_to_fibers(kwargs: &serde_json::Value) -> Result<serde_json::Value, Error> {
    use serde_json::Value;
    let Some(Value::Array(dims)) = kwargs.get("dim") else {
        return Ok(kwargs.clone());
    };
    let dims = dims.clone();
    let first = dims
        .first()
        .cloned()
        .ok_or_else(|| invalid("dim", "an integer or a non-empty tuple", "[]"))?;
    let mut out = kwargs.clone();
    let Some(obj) = out.as_object_mut() else {
        return Ok(out);
    };
    for field in ["num_tokens", "num_positions"] {
        if obj.get(field).is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                "dim",
                "an integer with num_tokens or num_positions (nn.Embedding(n, dim))",
                Value::Array(dims.clone()),
            ));
        }
    }
    for field in ["dim_in", "dim_out"] {
        if obj.get(field).is_none_or(Value::is_null) {
            obj.insert(field.into(), Value::Array(dims.clone()));
        }
    }
    if obj.get("hidden_fiber_dict").is_none_or(Value::is_null) {
        if let Some(nd) = obj.get("num_degrees").and_then(Value::as_u64) {
            let fiber: serde_json::Map<String, Value> = dims
                .iter()
                .take(nd as usize)
                .enumerate()
                .map(|(l, c)| (l.to_string(), c.clone()))
                .collect();
            obj.insert("hidden_fiber_dict".into(), Value::Object(fiber));
        }
    }
    obj.insert("dim".into(), first);
    Ok(out)
}

impl Se3TransformerConfig {
    /// Parses constructor kwargs (a JSON object) and validates them.
    ///
    /// # Errors
    /// `UnknownKwarg` for a kwarg `SE3Transformer` does not have, `ConfigParse` for a value of the wrong
    /// JSON type, `InvalidConfig` (naming the field) for a combination the library rejects.
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, Error> {
        check_known_keys("SE3Transformer", kwargs, SE3T_KWARGS)?;
        let kwargs = &tuple_dim_to_fibers(kwargs)?;
        let cfg: Self =
            serde_json::from_value(kwargs.clone()).map_err(|source| Error::ConfigParse {
                path: "constructor_kwargs".into(),
                source,
            })?;
        cfg.shape()?;
        Ok(cfg)
    }

    /// Validates the config and derives its fibers.
    ///
    /// # Errors
    /// `TooLarge` for a size above the bounds of [`crate::limits`] (checked first, before anything
    /// is derived), `InvalidConfig` naming the first offending field.
    pub fn shape(&self) -> Result<Se3TransformerShape, Error> {
        self.check_sizes()?;
        if self.dim == 0 {
            return Err(invalid("dim", "a positive dimension", 0));
        }
        if self.heads == 0 {
            return Err(invalid("heads", "at least one head", 0));
        }
        if self.dim_head == 0 {
            return Err(invalid("dim_head", "a positive head dimension", 0));
        }
        if self.input_degrees == 0 {
            return Err(invalid("input_degrees", "at least 1", 0));
        }
        if self.num_edge_tokens.is_some() && self.edge_dim.is_none() {
            return Err(invalid(
                "edge_dim",
                "an edge dimension when num_edge_tokens is set",
                "None",
            ));
        }
        if let Some(k) = self.num_adj_degrees {
            if k < 1 {
                return Err(invalid("num_adj_degrees", "at least 1", k));
            }
        }
        if self.linear_proj_keys && self.tie_key_values {
            return Err(invalid(
                "tie_key_values",
                "false when linear_proj_keys is true",
                true,
            ));
        }
        if self.causal && !self.attend_self {
            return Err(invalid("attend_self", "true when causal is true", false));
        }
        if self.reversible && self.global_feats_dim.is_some() {
            return Err(invalid(
                "global_feats_dim",
                "None when reversible is true",
                format!("{:?}", self.global_feats_dim),
            ));
        }
        if self.num_neighbors == Some(0) && !self.attend_sparse_neighbors {
            return Err(invalid(
                "num_neighbors",
                "more than 0 unless attend_sparse_neighbors is true",
                0,
            ));
        }
        if !self.valid_radius.is_finite() && self.valid_radius != f64::INFINITY {
            return Err(invalid("valid_radius", "a number", self.valid_radius));
        }
        let dim_in = self.dim_in.clone().unwrap_or(DimSpec::One(self.dim));
        // `Fiber.create` zips `range(input_degrees)` with a tuple: a shorter `dim_in` leaves the
        // higher input degrees out of conv_in (the feats dict still holds every degree)
        let fiber_in: FiberDims = (0..self.input_degrees)
            .map_while(|l| dim_in.channels(l).map(|c| (l, c)))
            .collect();
        if fiber_in.is_empty() {
            return Err(invalid(
                "dim_in",
                "at least one input channel count",
                format!("{dim_in:?}"),
            ));
        }
        if fiber_in.iter().any(|&(_, c)| c == 0) {
            return Err(invalid("dim_in", "positive channel counts", 0));
        }
        if self.num_positions.is_some() && fiber_in[0].1 != self.dim && self.dim != 1 {
            // `feats += pos_emb(arange(n))` adds (n, dim) to (b, n, dim_in) in place
            return Err(invalid(
                "num_positions",
                "None unless dim_in equals dim (or dim is 1): the position embedding is added to the features",
                format!("dim_in {} with dim {}", fiber_in[0].1, self.dim),
            ));
        }
        let fiber_hidden = match (&self.hidden_fiber_dict, self.num_degrees) {
            (Some(d), _) => parse_fiber_dict("hidden_fiber_dict", d)?,
            (None, Some(nd)) if nd > 0 => (0..nd).map(|l| (l, self.dim)).collect(),
            (None, _) => {
                return Err(invalid(
                    "num_degrees",
                    "a positive number of degrees or a hidden_fiber_dict",
                    format!("{:?}", self.num_degrees),
                ))
            }
        };
        let has_degree0 = fiber_hidden.first().is_some_and(|&(l, _)| l == 0);
        // rotary embeddings only touch degree-0 attention: without a degree-0 hidden fiber nothing fails
        if (self.rotary_position || self.rotary_rel_dist) && !self.use_egnn && has_degree0 {
            if !self.attend_self {
                return Err(invalid(
                    "attend_self",
                    "true with rotary embeddings (keys include the node itself)",
                    false,
                ));
            }
            // each embedding has SinusoidalEmbeddings(dim_head // num_rot): ceil(d / 2) frequencies,
            // each used twice; together they must fit in a head (else the library fails to broadcast)
            let num_rot = usize::from(self.rotary_position) + usize::from(self.rotary_rel_dist);
            let d = self.dim_head / num_rot;
            if num_rot * 2 * d.div_ceil(2) > self.dim_head {
                return Err(invalid(
                    "dim_head",
                    "room for the rotary channels (num_rotaries * 2 * ceil((dim_head / num_rotaries) / 2) <= dim_head)",
                    self.dim_head,
                ));
            }
        }
        if self.global_feats_dim.is_some() && !self.use_egnn && !has_degree0 {
            // the global key/value projections are sized by hidden_fiber[0]
            return Err(invalid(
                "global_feats_dim",
                "None unless the hidden fiber has degree 0",
                format!("{:?}", self.global_feats_dim),
            ));
        }
        if self.reversible && !self.use_egnn {
            // ReversibleSequence concatenates every degree along the last axis
            let c0 = fiber_hidden.first().map(|&(_, c)| c);
            if fiber_hidden.iter().any(|&(_, c)| Some(c) != c0) {
                return Err(invalid(
                    "reversible",
                    "false unless every hidden degree has the same channel count",
                    format!("{fiber_hidden:?}"),
                ));
            }
        }
        let num_degrees = match self.num_degrees {
            Some(nd) => nd,
            None => fiber_hidden.iter().map(|&(l, _)| l).max().unwrap_or(0) + 1,
        };
        if num_degrees == 0 {
            return Err(invalid("num_degrees", "at least 1", 0));
        }
        let max_degree = num_degrees - 1;
        let mut output_degrees = if self.use_egnn {
            None
        } else {
            self.output_degrees
        };
        let fiber_out = if let Some(d) = &self.out_fiber_dict {
            let f = parse_fiber_dict("out_fiber_dict", d)?;
            output_degrees = Some(f.iter().map(|&(l, _)| l).max().unwrap_or(0) + 1);
            Some(f)
        } else if let Some(od) = output_degrees {
            if od == 0 {
                return Err(invalid("output_degrees", "at least 1 or None", 0));
            }
            // `Fiber.create` zips `range(output_degrees)` with a tuple: a shorter `dim_out` gives
            // fewer output degrees (while `output_degrees` keeps its value)
            let dim_out = self.dim_out.clone().unwrap_or(DimSpec::One(self.dim));
            let f: FiberDims = (0..od)
                .map_while(|l| dim_out.channels(l).map(|c| (l, c)))
                .collect();
            if f.is_empty() {
                return Err(invalid(
                    "dim_out",
                    "at least one output channel count",
                    format!("{dim_out:?}"),
                ));
            }
            Some(f)
        } else {
            None
        };
        if self.use_egnn && fiber_hidden.first().map(|&(l, _)| l) != Some(0) {
            return Err(invalid(
                "hidden_fiber_dict",
                "a degree-0 entry with use_egnn",
                "none",
            ));
        }
        let check = |field: &'static str, f: &FiberDims| -> Result<(), Error> {
            for &(l, _) in f {
                if l > max_degree {
                    return Err(invalid(
                        field,
                        "degrees below num_degrees (the kernel basis)",
                        l,
                    ));
                }
            }
            Ok(())
        };
        check("input_degrees", &fiber_in)?;
        check("hidden_fiber_dict", &fiber_hidden)?;
        if let Some(f) = &fiber_out {
            check("output_degrees", f)?;
        }
        if let Some(g) = self.global_feats_dim {
            if g == 0 {
                return Err(invalid("global_feats_dim", "a positive dimension", 0));
            }
        }
        let has_edges = self.edge_dim.is_some_and(|e| e > 0);
        let adj = if self.num_adj_degrees.is_some() && self.adj_dim > 0 {
            self.adj_dim
        } else {
            0
        };
        let edge_dim = if has_edges {
            self.edge_dim.unwrap_or(0)
        } else {
            0
        } + adj;
        Ok(Se3TransformerShape {
            fiber_in,
            fiber_hidden,
            fiber_out,
            max_degree,
            edge_dim,
            output_degrees,
        })
    }
}

impl Se3TransformerConfig {
    /// Every size field against the bounds of [`crate::limits`], before any fiber is derived.
    fn check_sizes(&self) -> Result<(), Error> {
        use crate::limits::{
            at_most, at_most_opt, MAX_ADJ_DEGREES, MAX_CHANNELS, MAX_DEGREE, MAX_DEPTH,
            MAX_EMBEDDING_ROWS, MAX_FOURIER_FEATURES,
        };
        at_most("dim", self.dim, MAX_CHANNELS)?;
        at_most("heads", self.heads, MAX_CHANNELS)?;
        at_most("dim_head", self.dim_head, MAX_CHANNELS)?;
        at_most(
            "heads * dim_head",
            self.heads.saturating_mul(self.dim_head),
            MAX_CHANNELS,
        )?;
        at_most("depth", self.depth, MAX_DEPTH)?;
        at_most("num_conv_layers", self.num_conv_layers, MAX_DEPTH)?;
        at_most("input_degrees", self.input_degrees, MAX_DEGREE + 1)?;
        at_most_opt("num_degrees", self.num_degrees, MAX_DEGREE + 1)?;
        at_most_opt("output_degrees", self.output_degrees, MAX_DEGREE + 1)?;
        at_most_opt("num_tokens", self.num_tokens, MAX_EMBEDDING_ROWS)?;
        at_most_opt("num_positions", self.num_positions, MAX_EMBEDDING_ROWS)?;
        at_most_opt("num_edge_tokens", self.num_edge_tokens, MAX_EMBEDDING_ROWS)?;
        at_most_opt("edge_dim", self.edge_dim, MAX_CHANNELS)?;
        at_most("adj_dim", self.adj_dim, MAX_CHANNELS)?;
        at_most_opt("num_adj_degrees", self.num_adj_degrees, MAX_ADJ_DEGREES)?;
        at_most(
            "rel_dist_num_fourier_features",
            self.rel_dist_num_fourier_features,
            MAX_FOURIER_FEATURES,
        )?;
        at_most_opt("global_feats_dim", self.global_feats_dim, MAX_CHANNELS)?;
        at_most("egnn_hidden_dim", self.egnn_hidden_dim, MAX_CHANNELS)?;
        for (field, spec) in [("dim_in", &self.dim_in), ("dim_out", &self.dim_out)] {
            match spec {
                Some(DimSpec::One(c)) => at_most(field, *c, MAX_CHANNELS)?,
                Some(DimSpec::PerDegree(v)) => {
                    for &c in v.iter().take(MAX_DEGREE + 1) {
                        at_most(field, c, MAX_CHANNELS)?;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl Se3TransformerForward {
    /// Parses the forward literals.
    ///
    /// # Errors
    /// `UnknownKwarg` for another literal, `ConfigParse` for a wrong type.
    pub fn from_literals(literals: &serde_json::Value) -> Result<Self, Error> {
        if literals.is_null() {
            return Ok(Self::default());
        }
        check_known_keys(
            "SE3Transformer.forward",
            literals,
            &["return_type", "return_pooled"],
        )?;
        serde_json::from_value(literals.clone()).map_err(|source| Error::ConfigParse {
            path: "forward_kwargs.literals".into(),
            source,
        })
    }
}
