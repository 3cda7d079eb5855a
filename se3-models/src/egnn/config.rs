//! Constructor kwargs of egnn-pytorch 0.2.8's `EGNN` (one layer) and `EGNN_Network`, as written
//! in a reference `config.json`, with the library's defaults and its assertions as typed errors.

use se3_core::layers::{EgnnOptions, MessagePool};
use serde::Deserialize;

use crate::model_file::check_known_keys;
use crate::se3_transformer::config::py_num;
use crate::Error;

fn d_m_dim() -> usize {
    16
}
fn d_true() -> bool {
    true
}
fn d_scale_init() -> f64 {
    1e-2
}
fn d_init_eps() -> f64 {
    1e-3
}
fn d_inf() -> f64 {
    f64::INFINITY
}
fn d_pool() -> String {
    "sum".into()
}
fn d_heads() -> usize {
    8
}
fn d_dim_head() -> usize {
    64
}
fn d_global_tokens() -> usize {
    4
}

/// The kwargs of `EGNN(...)` (also the `**kwargs` an `EGNN_Network` passes to its layers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EgnnConfig {
    /// Node feature width.
    pub dim: usize,
    /// Edge feature width.
    #[serde(default)]
    pub edge_dim: usize,
    /// Message width.
    #[serde(default = "d_m_dim")]
    pub m_dim: usize,
    /// Fourier features of the squared distance.
    #[serde(default)]
    pub fourier_features: usize,
    /// Neighbours per node (0: every node, itself included).
    #[serde(default)]
    pub num_nearest_neighbors: usize,
    /// Dropout (inference: identity).
    #[serde(default)]
    pub dropout: f64,
    /// Std of the library's weight initialisation (irrelevant for loaded weights).
    #[serde(default = "d_init_eps")]
    pub init_eps: f64,
    /// LayerNorm before the node MLP.
    #[serde(default)]
    pub norm_feats: bool,
    /// Unit relative vectors times a learned scale.
    #[serde(default)]
    pub norm_coors: bool,
    /// Initial value of that scale (irrelevant for loaded weights).
    #[serde(default = "d_scale_init")]
    pub norm_coors_scale_init: f64,
    /// Update features.
    #[serde(default = "d_true")]
    pub update_feats: bool,
    /// Update coordinates.
    #[serde(default = "d_true")]
    pub update_coors: bool,
    /// Neighbours are the bonded nodes of `adj_mat` (and the node itself).
    #[serde(default)]
    pub only_sparse_neighbors: bool,
    /// Largest *squared* distance (after masking) of a valid neighbour; used only with a mask.
    #[serde(default = "d_inf", deserialize_with = "py_num::float")]
    pub valid_radius: f64,
    /// `sum` or `mean`.
    #[serde(default = "d_pool")]
    pub m_pool_method: String,
    /// Sigmoid gate on messages.
    #[serde(default)]
    pub soft_edges: bool,
    /// Clamp of the coordinate weights.
    #[serde(default, deserialize_with = "py_num::opt_float")]
    pub coor_weights_clamp_value: Option<f64>,
}

/// The layer kwargs an `EGNN` accepts.
pub const EGNN_KWARGS: &[&str] = &[
    "dim",
    "edge_dim",
    "m_dim",
    "fourier_features",
    "num_nearest_neighbors",
    "dropout",
    "init_eps",
    "norm_feats",
    "norm_coors",
    "norm_coors_scale_init",
    "update_feats",
    "update_coors",
    "only_sparse_neighbors",
    "valid_radius",
    "m_pool_method",
    "soft_edges",
    "coor_weights_clamp_value",
];

/// The kwargs only `EGNN_Network` takes (its other kwargs go to every layer).
pub const NETWORK_KWARGS: &[&str] = &[
    "depth",
    "num_tokens",
    "num_edge_tokens",
    "num_positions",
    "num_adj_degrees",
    "adj_dim",
    "global_linear_attn_every",
    "global_linear_attn_heads",
    "global_linear_attn_dim_head",
    "num_global_tokens",
];

fn parse<T: serde::de::DeserializeOwned>(kwargs: &serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(kwargs.clone()).map_err(|source| Error::ConfigParse {
        path: "constructor_kwargs".into(),
        source,
    })
}

impl EgnnConfig {
    /// Parses and checks the kwargs of `EGNN(...)`.
    ///
    /// # Errors
    /// `UnknownKwarg`, `ConfigParse`, and `InvalidConfig` for what the library asserts
    /// (`m_pool_method` not `sum`/`mean`, neither features nor coordinates updated) or what
    /// cannot run (`dim` 0, `m_dim` 0, negative dropout).
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, Error> {
        check_known_keys("EGNN", kwargs, EGNN_KWARGS)?;
        let cfg: Self = parse(kwargs)?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), Error> {
        if self.m_pool().is_none() {
            return Err(Error::InvalidConfig {
                field: "m_pool_method",
                expected: "`sum` or `mean`",
                found: self.m_pool_method.clone(),
            });
        }
        if !self.update_feats && !self.update_coors {
            return Err(Error::InvalidConfig {
                field: "update_feats",
                expected: "update_feats or update_coors true (the library asserts)",
                found: "both false".into(),
            });
        }
        if self.dim == 0 || self.m_dim == 0 {
            return Err(Error::InvalidConfig {
                field: "dim",
                expected: "dim and m_dim of at least 1",
                found: format!("dim {}, m_dim {}", self.dim, self.m_dim),
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidConfig {
                field: "dropout",
                expected: "a probability in [0, 1)",
                found: self.dropout.to_string(),
            });
        }
        if self.valid_radius.is_nan() {
            return Err(Error::InvalidConfig {
                field: "valid_radius",
                expected: "a number (squared distance)",
                found: "NaN".into(),
            });
        }
        if self
            .coor_weights_clamp_value
            .is_some_and(|c| c.is_nan() || c < 0.0)
        {
            return Err(Error::InvalidConfig {
                field: "coor_weights_clamp_value",
                expected: "a non-negative clamp",
                found: format!("{:?}", self.coor_weights_clamp_value),
            });
        }
        Ok(())
    }

    /// The pooling of `m_pool_method`.
    pub fn m_pool(&self) -> Option<MessagePool> {
        match self.m_pool_method.as_str() {
            "sum" => Some(MessagePool::Sum),
            "mean" => Some(MessagePool::Mean),
            _ => None,
        }
    }

    /// Whether neighbours are selected (`num_nearest_neighbors > 0` or `only_sparse_neighbors`).
    pub fn uses_nearest(&self) -> bool {
        self.num_nearest_neighbors > 0 || self.only_sparse_neighbors
    }

    /// The options of the se3-core layer; `edge_dim` is the total edge width.
    pub fn options(&self, edge_dim: usize) -> EgnnOptions {
        EgnnOptions {
            dim: self.dim,
            edge_dim,
            m_dim: self.m_dim,
            fourier_features: self.fourier_features,
            norm_feats: self.norm_feats,
            norm_coors: self.norm_coors,
            update_feats: self.update_feats,
            update_coors: self.update_coors,
            soft_edges: self.soft_edges,
            m_pool: self.m_pool().unwrap_or(MessagePool::Sum),
            coor_weights_clamp: self.coor_weights_clamp_value.map(|c| c as f32),
        }
    }
}

/// The network-level kwargs of `EGNN_Network(...)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetworkKwargs {
    /// Number of layers.
    pub depth: usize,
    /// Vocabulary of node tokens (features are token ids).
    #[serde(default)]
    pub num_tokens: Option<usize>,
    /// Vocabulary of edge tokens (edges are token ids).
    #[serde(default)]
    pub num_edge_tokens: Option<usize>,
    /// Learned position embeddings (at most this many nodes).
    #[serde(default)]
    pub num_positions: Option<usize>,
    /// Bond-distance labels up to this degree.
    #[serde(default)]
    pub num_adj_degrees: Option<usize>,
    /// Width of the bond-distance label embedding.
    #[serde(default)]
    pub adj_dim: usize,
    /// A global attention block before every layer whose index is a multiple of this (0: none).
    #[serde(default)]
    pub global_linear_attn_every: usize,
    /// Heads of the global attention.
    #[serde(default = "d_heads")]
    pub global_linear_attn_heads: usize,
    /// Head width of the global attention.
    #[serde(default = "d_dim_head")]
    pub global_linear_attn_dim_head: usize,
    /// Global tokens.
    #[serde(default = "d_global_tokens")]
    pub num_global_tokens: usize,
}

/// `EGNN_Network(...)`: network kwargs plus the layer kwargs every layer gets (with
/// `norm_feats = True` and `edge_dim = edge_dim + adj_dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct EgnnNetworkConfig {
    /// The network-level kwargs.
    pub net: NetworkKwargs,
    /// The kwargs of every layer as given (its `edge_dim` is the network's).
    pub layer: EgnnConfig,
}

impl EgnnNetworkConfig {
    /// Parses and checks the kwargs of `EGNN_Network(...)`.
    ///
    /// # Errors
    /// `UnknownKwarg`; `InvalidConfig` for `norm_feats` (the network passes it itself: Python
    /// raises "multiple values for keyword argument"), `num_adj_degrees < 1` (asserted), a
    /// vocabulary of 0, `depth` 0, global attention with 0 heads/head width/tokens; the layer
    /// errors of [`EgnnConfig::from_kwargs`].
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, Error> {
        let known: Vec<&str> = EGNN_KWARGS
            .iter()
            .chain(NETWORK_KWARGS)
            .copied()
            .filter(|k| *k != "norm_feats")
            .collect();
        if kwargs.get("norm_feats").is_some() {
            return Err(Error::InvalidConfig {
                field: "norm_feats",
                expected: "no norm_feats (EGNN_Network sets it to True for its layers)",
                found: "norm_feats given".into(),
            });
        }
        check_known_keys("EGNN_Network", kwargs, &known)?;
        let net: NetworkKwargs = parse(kwargs)?;
        let mut layer_kwargs = kwargs.clone();
        if let Some(map) = layer_kwargs.as_object_mut() {
            for k in NETWORK_KWARGS {
                map.remove(*k);
            }
            map.insert("norm_feats".into(), serde_json::Value::Bool(true));
        }
        let layer: EgnnConfig = parse(&layer_kwargs)?;
        layer.check()?;
        if net.num_adj_degrees == Some(0) {
            return Err(Error::InvalidConfig {
                field: "num_adj_degrees",
                expected: "at least 1 (the library asserts)",
                found: "0".into(),
            });
        }
        if net.depth == 0 {
            return Err(Error::InvalidConfig {
                field: "depth",
                expected: "at least one layer",
                found: "0".into(),
            });
        }
        for (field, v) in [
            ("num_tokens", net.num_tokens),
            ("num_edge_tokens", net.num_edge_tokens),
            ("num_positions", net.num_positions),
        ] {
            if v == Some(0) {
                return Err(Error::InvalidConfig {
                    field,
                    expected: "a vocabulary of at least 1",
                    found: "0".into(),
                });
            }
        }
        if net.global_linear_attn_every > 0
            && (net.global_linear_attn_heads == 0
                || net.global_linear_attn_dim_head == 0
                || net.num_global_tokens == 0)
        {
            return Err(Error::InvalidConfig {
                field: "global_linear_attn_heads",
                expected:
                    "heads, dim_head and num_global_tokens of at least 1 with global attention",
                found: format!(
                    "heads {}, dim_head {}, tokens {}",
                    net.global_linear_attn_heads,
                    net.global_linear_attn_dim_head,
                    net.num_global_tokens
                ),
            });
        }
        Ok(EgnnNetworkConfig { net, layer })
    }

    /// Width of the adjacency-label embedding the layers see (0 without `num_adj_degrees`).
    pub fn adj_width(&self) -> usize {
        if self.net.num_adj_degrees.is_some() {
            self.net.adj_dim
        } else {
            0
        }
    }

    /// Whether layer `index` is preceded by a global attention block.
    pub fn is_global_layer(&self, index: usize) -> bool {
        let every = self.net.global_linear_attn_every;
        every > 0 && index.is_multiple_of(every)
    }
}

/// `(key, shape)` of one parameter.
pub type KeyShape = (String, Vec<usize>);

impl EgnnConfig {
    /// The state-dict keys and shapes of one `EGNN` layer under `prefix`, whose edge features are
    /// `edge_dim` wide in total.
    pub fn expected_keys(&self, prefix: &str, edge_dim: usize) -> Vec<KeyShape> {
        let o = self.options(edge_dim);
        let (dim, m, e) = (o.dim, o.m_dim, o.edge_input_width());
        let mut keys = Vec::new();
        let mut linear = |name: &str, input: usize, output: usize| {
            keys.push((format!("{prefix}{name}.weight"), vec![output, input]));
            keys.push((format!("{prefix}{name}.bias"), vec![output]));
        };
        linear("edge_mlp.0", e, 2 * e);
        linear("edge_mlp.3", 2 * e, m);
        if o.soft_edges {
            linear("edge_gate.0", m, 1);
        }
        if o.update_feats {
            linear("node_mlp.0", dim + m, 2 * dim);
            linear("node_mlp.3", 2 * dim, dim);
        }
        if o.update_coors {
            linear("coors_mlp.0", m, 4 * m);
            linear("coors_mlp.3", 4 * m, 1);
        }
        if o.norm_feats {
            keys.push((format!("{prefix}node_norm.weight"), vec![dim]));
            keys.push((format!("{prefix}node_norm.bias"), vec![dim]));
        }
        if o.norm_coors {
            keys.push((format!("{prefix}coors_norm.scale"), vec![1]));
        }
        keys
    }
}

impl EgnnNetworkConfig {
    /// The state-dict keys and shapes of the network (egnn-pytorch's names).
    pub fn expected_keys(&self) -> Vec<KeyShape> {
        let (net, dim) = (&self.net, self.layer.dim);
        let mut keys = Vec::new();
        let mut table = |key: &str, rows: Option<usize>, width: usize| {
            if let Some(r) = rows {
                keys.push((key.to_string(), vec![r, width]));
            }
        };
        table("token_emb.weight", net.num_tokens, dim);
        table("pos_emb.weight", net.num_positions, dim);
        table("edge_emb.weight", net.num_edge_tokens, self.layer.edge_dim);
        table(
            "adj_emb.weight",
            net.num_adj_degrees
                .filter(|_| net.adj_dim > 0)
                .map(|d| d + 1),
            net.adj_dim,
        );
        if net.global_linear_attn_every > 0 {
            keys.push(("global_tokens".into(), vec![net.num_global_tokens, dim]));
        }
        let inner = net.global_linear_attn_heads * net.global_linear_attn_dim_head;
        for i in 0..net.depth {
            if self.is_global_layer(i) {
                let p = format!("layers.{i}.0.");
                for norm in ["norm_seq", "norm_queries", "ff.0"] {
                    keys.push((format!("{p}{norm}.weight"), vec![dim]));
                    keys.push((format!("{p}{norm}.bias"), vec![dim]));
                }
                for attn in ["attn1", "attn2"] {
                    keys.push((format!("{p}{attn}.to_q.weight"), vec![inner, dim]));
                    keys.push((format!("{p}{attn}.to_kv.weight"), vec![2 * inner, dim]));
                    keys.push((format!("{p}{attn}.to_out.weight"), vec![dim, inner]));
                    keys.push((format!("{p}{attn}.to_out.bias"), vec![dim]));
                }
                keys.push((format!("{p}ff.1.weight"), vec![4 * dim, dim]));
                keys.push((format!("{p}ff.1.bias"), vec![4 * dim]));
                keys.push((format!("{p}ff.3.weight"), vec![dim, 4 * dim]));
                keys.push((format!("{p}ff.3.bias"), vec![dim]));
            }
            keys.extend(self.layer.expected_keys(
                &format!("layers.{i}.1."),
                self.layer.edge_dim + self.adj_width(),
            ));
        }
        keys
    }
}
