//! The SE(3)-Transformer with its fibers as types: a user declares them with `#[fiber]` and
//! gets [`Se3TransformerNet`] (`conv_in -> trunk -> conv_out`, one luminal graph loaded from a
//! se3-transformer-pytorch state dict) whose inputs and outputs are `Features<In>` and
//! `Features<Out>`, so feeding it features of another fiber is a compile error.
//!
//! A sketch (the README and `examples/se3_transformer_typed.rs` have the whole program,
//! compiled and run):
//!
//! ```text
//! #[fiber(0:8)]        struct Atoms;   // input: type-0 features (`feats (b, n, 8)`)
//! #[fiber(0:8, 1:8)]   struct Hidden;  // dim = 8, num_degrees = 2
//! #[fiber(0:8)]        struct Readout; // output_degrees = 1
//!
//! let model = TypedSe3Transformer::<Atoms, Hidden, Readout>::load(&state_dict, options)?;
//! let mut run = model.compile()?;
//! let y: Features<Readout> = run.forward(&coords, batch, Some(&mask), &x)?;
//! ```
//!
//! The model is the run-time [`Se3TransformerNet`] (the one implementation of the graph),
//! checked against the types when it is made: [`TypedSe3Transformer::options_of`] checks a
//! config's fibers, [`TypedSe3Transformer::conv_in`] and the other accessors give the layers
//! as typed se3-core layers ([`Conv<In, Hidden>`], [`AttentionBlock<Hidden>`],
//! [`FeedForwardBlock<Hidden>`], [`Conv<Hidden, Out>`]) for a graph written by hand.
//! Every option of [`Se3TransformerOptions`] runs; `reduce_dim_out` (whose output has one
//! channel per degree, not `Out`'s) is [`Error::NotTyped`].

use std::marker::PhantomData;

use rand::Rng;
use se3_core::exec::Session;
use se3_core::fiber::{Features, Fiber};
use se3_core::layers::{
    AttentionBlock, Conv, EdgeBasis, EdgeGraph, FeedForwardBlock, GraphFeatures, Norm,
};

use crate::checkpoint::StateDict;
use crate::se3_transformer::config::Se3TransformerConfig;
use crate::se3_transformer::net::{
    CloudInputs, NetFibers, NetSession, Se3TransformerNet, Se3TransformerOptions, Trunk,
};
use crate::Error;

mod module;

/// An SE(3)-Transformer from fiber `In` through `Hidden` to `Out` (module doc).
#[derive(Debug, Clone)]
pub struct TypedSe3Transformer<In: Fiber, Hidden: Fiber, Out: Fiber> {
    net: Se3TransformerNet,
    fibers: PhantomData<fn(In, Hidden) -> Out>,
}

impl<In: Fiber, Hidden: Fiber, Out: Fiber> TypedSe3Transformer<In, Hidden, Out> {
    /// The fibers of the types.
    fn fibers() -> NetFibers {
        NetFibers {
            input: In::spec(),
            hidden: Hidden::spec(),
            output: Out::spec(),
        }
    }

    /// `NotTyped` for options the types cannot carry.
    fn check(options: &Se3TransformerOptions) -> Result<(), Error> {
        if options.reduce_dim_out {
            return Err(Error::NotTyped {
                option: "reduce_dim_out",
            });
        }
        if !options.conv_out {
            // the output is the trunk's
            Out::check_spec(&Hidden::spec())?;
        }
        if options.num_tokens.is_some() && In::degrees().into_iter().any(|d| d.l != 0) {
            return Err(Error::NotTyped {
                option: "num_tokens with an input fiber beyond degree 0",
            });
        }
        Ok(())
    }

    /// The options of `cfg`, after checking that `In`, `Hidden`, `Out` are its fibers.
    ///
    /// # Errors
    /// `NotTyped` for `reduce_dim_out` or tokens with an input beyond degree 0;
    /// `Core(FiberMismatch)` if a fiber differs from the config's; the config's validation
    /// errors.
    pub fn options_of(cfg: &Se3TransformerConfig) -> Result<Se3TransformerOptions, Error> {
        let (options, fibers) = Se3TransformerOptions::from_config(cfg)?;
        In::check_spec(&fibers.input)?;
        Hidden::check_spec(&fibers.hidden)?;
        Out::check_spec(&fibers.output)?;
        Self::check(&options)?;
        Ok(options)
    }

    /// A model with fresh weights.
    ///
    /// # Errors
    /// As [`Se3TransformerNet::new`]; `NotTyped` as [`TypedSe3Transformer::options_of`].
    pub fn new(options: Se3TransformerOptions, rng: &mut impl Rng) -> Result<Self, Error> {
        Self::check(&options)?;
        Ok(TypedSe3Transformer {
            net: Se3TransformerNet::new(Self::fibers(), options, rng)?,
            fibers: PhantomData,
        })
    }

    /// Loads a se3-transformer-pytorch `SE3Transformer` state dict (values rounded to f32).
    ///
    /// # Errors
    /// As [`Se3TransformerNet::load`] (a fiber or option that differs from the checkpoint's
    /// shows as `Core(MissingKey)` / `Core(WrongShape)`); `NotTyped` as
    /// [`TypedSe3Transformer::options_of`].
    pub fn load(sd: &StateDict, options: Se3TransformerOptions) -> Result<Self, Error> {
        Self::check(&options)?;
        Ok(TypedSe3Transformer {
            net: Se3TransformerNet::load(sd, Self::fibers(), options)?,
            fibers: PhantomData,
        })
    }

    /// The typed view of a run-time model.
    ///
    /// # Errors
    /// `Core(FiberMismatch)` if its fibers are not `In`, `Hidden`, `Out`; `NotTyped` as
    /// [`TypedSe3Transformer::options_of`].
    pub fn from_net(net: Se3TransformerNet) -> Result<Self, Error> {
        In::check_spec(&net.fibers().input)?;
        Hidden::check_spec(&net.fibers().hidden)?;
        Out::check_spec(&net.fibers().output)?;
        Self::check(net.options())?;
        Ok(TypedSe3Transformer {
            net,
            fibers: PhantomData,
        })
    }

    /// The options.
    pub fn options(&self) -> &Se3TransformerOptions {
        self.net.options()
    }

    /// The run-time model.
    pub fn net(&self) -> &Se3TransformerNet {
        &self.net
    }

    /// The run-time model, mutably (its layers' weights).
    pub fn net_mut(&mut self) -> &mut Se3TransformerNet {
        &mut self.net
    }

    /// The run-time model.
    pub fn into_net(self) -> Se3TransformerNet {
        self.net
    }

    /// `conv_in` as a typed layer (a copy).
    ///
    /// # Errors
    /// None for a model made by this type (its fibers were checked).
    pub fn conv_in(&self) -> Result<Conv<In, Hidden>, Error> {
        Ok(Conv::from_layer(self.net.conv_in.clone())?)
    }

    /// `convs` as typed layers (copies): `(norm, conv)` pairs, applied norm first.
    ///
    /// # Errors
    /// As [`TypedSe3Transformer::conv_in`].
    #[allow(clippy::type_complexity)]
    pub fn convs(&self) -> Result<Vec<(Norm<Hidden>, Conv<Hidden, Hidden>)>, Error> {
        self.net
            .convs
            .iter()
            .map(|(n, c)| Ok((Norm::from_layer(n.clone())?, Conv::from_layer(c.clone())?)))
            .collect()
    }

    /// The attention trunk's blocks as typed layers (copies); none with the EGNN trunk.
    ///
    /// # Errors
    /// As [`TypedSe3Transformer::conv_in`].
    #[allow(clippy::type_complexity)]
    pub fn blocks(&self) -> Result<Vec<(AttentionBlock<Hidden>, FeedForwardBlock<Hidden>)>, Error> {
        match &self.net.trunk {
            Trunk::Attention(blocks) => blocks
                .iter()
                .map(|(a, f)| {
                    Ok((
                        AttentionBlock::from_layer(a.clone())?,
                        FeedForwardBlock::from_layer(f.clone())?,
                    ))
                })
                .collect(),
            Trunk::Egnn(_) => Ok(Vec::new()),
        }
    }

    /// `conv_out` as a typed layer (a copy), if the model has one.
    ///
    /// # Errors
    /// As [`TypedSe3Transformer::conv_in`].
    pub fn conv_out(&self) -> Result<Option<Conv<Hidden, Out>>, Error> {
        Ok(match &self.net.conv_out {
            Some(c) => Some(Conv::from_layer(c.clone())?),
            None => None,
        })
    }

    /// The output norm as a typed layer (a copy), present with `norm_out`.
    ///
    /// # Errors
    /// As [`TypedSe3Transformer::conv_in`].
    pub fn norm(&self) -> Result<Option<Norm<Out>>, Error> {
        Ok(match &self.net.norm {
            Some(n) => Some(Norm::from_layer(n.clone())?),
            None => None,
        })
    }

    /// The highest degree of the kernel basis the layers need.
    pub fn max_degree() -> usize {
        In::max_degree()
            .max(Hidden::max_degree())
            .max(Out::max_degree())
    }

    /// Adds the layers to `s` on node features `x`, over `edges` (grouped by destination)
    /// with their kernel `basis`; weights are named as the checkpoint keys
    /// ([`Se3TransformerNet::build`]).
    ///
    /// # Errors
    /// As [`Se3TransformerNet::build`].
    pub fn build(
        &self,
        s: &mut Session,
        x: &GraphFeatures<In>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<GraphFeatures<Out>, Error> {
        let y = self.net.build(s, "", x.untyped(), edges, basis)?;
        Ok(GraphFeatures::new(y)?)
    }

    /// The whole forward pass as one compiled session ([`Se3TransformerNet::compile`]).
    ///
    /// # Errors
    /// As [`Se3TransformerNet::compile`].
    pub fn compile(&self) -> Result<TypedSession<In, Out>, Error> {
        Ok(TypedSession {
            inner: self.net.compile()?,
            fibers: PhantomData,
        })
    }
}

/// A compiled [`TypedSe3Transformer`], ready to run on batches of point clouds.
#[derive(Debug)]
pub struct TypedSession<In: Fiber, Out: Fiber> {
    inner: NetSession,
    fibers: PhantomData<fn(In) -> Out>,
}

impl<In: Fiber, Out: Fiber> TypedSession<In, Out> {
    /// The session (inputs and outputs named as in [`Se3TransformerNet::compile`]).
    pub fn session(&mut self) -> &mut Session {
        self.inner.session()
    }

    /// The run-time session.
    pub fn net_session(&mut self) -> &mut NetSession {
        &mut self.inner
    }

    /// Runs `batch` clouds of `n` nodes each, stacked: `coords` and `x` hold `batch * n` rows,
    /// `mask` (if any) one flag per row. For a model without edge features.
    ///
    /// # Errors
    /// As [`NetSession::forward`].
    pub fn forward(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &Features<In>,
    ) -> Result<Features<Out>, Error> {
        self.forward_with(coords, batch, mask, x, CloudInputs::default())
    }

    /// As [`TypedSession::forward`], with the continuous edge features of every ordered pair
    /// of each cloud, `(batch, n, n, edge_dim)` row-major (the library's `edges` input).
    ///
    /// # Errors
    /// As [`NetSession::forward`].
    pub fn forward_with_edges(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &Features<In>,
        edge_features: Option<&[f64]>,
    ) -> Result<Features<Out>, Error> {
        let extra = CloudInputs {
            edges: edge_features,
            ..CloudInputs::default()
        };
        self.forward_with(coords, batch, mask, x, extra)
    }

    /// As [`TypedSession::forward`], with the optional inputs of [`CloudInputs`].
    ///
    /// # Errors
    /// As [`NetSession::forward`].
    pub fn forward_with(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &Features<In>,
        extra: CloudInputs<'_>,
    ) -> Result<Features<Out>, Error> {
        let y = self.inner.forward(coords, batch, mask, x.blocks(), extra)?;
        Ok(Features::from_blocks(y)?)
    }

    /// As [`TypedSession::forward_with`] for a model with `num_tokens`: the nodes are token
    /// ids (`batch * n`, each in `0..num_tokens`), embedded by `token_emb.weight` into the
    /// degree-0 input.
    ///
    /// # Errors
    /// As [`NetSession::forward_tokens`].
    pub fn forward_tokens(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        tokens: &[i64],
        extra: CloudInputs<'_>,
    ) -> Result<Features<Out>, Error> {
        let y = self
            .inner
            .forward_tokens(coords, batch, mask, tokens, extra)?;
        Ok(Features::from_blocks(y)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rand::Rng;
    use se3_core::testing::{random_rotation, random_vector, rel_error, rng, TOL_F32};
    use se3_macros::fiber;

    use super::*;
    use crate::checkpoint::Tensor;
    use crate::inputs::{BoolTensor, ModelInputs, NodeFeats};
    use crate::model_file::ModelFile;
    use crate::se3_transformer::{Se3TransformerForward, Se3TransformerOracle};

    #[fiber(0:8)]
    struct Atoms;
    #[fiber(0:8, 1:8)]
    struct Hidden;
    #[fiber(0:8)]
    struct Readout;

    #[fiber(0:6)]
    struct Scalars;
    #[fiber(0:6, 1:6, 2:6)]
    struct Wide;
    #[fiber(0:6, 1:6)]
    struct Vectors;

    fn reference(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/reference/models")
            .join(name)
    }

    /// The typed assembly of reference folder `name` with fibers `In`, `Hidden`, `Out`, loaded
    /// from its weights and run on its inputs; returns the max relative error over its
    /// float64 outputs (pooled on the host for `return_pooled`) and the run with its inputs.
    #[allow(clippy::type_complexity)]
    fn reference_parity<In: Fiber, Hidden: Fiber, Out: Fiber>(
        name: &str,
    ) -> Result<
        (
            f64,
            TypedSession<In, Out>,
            Vec<[f64; 3]>,
            usize,
            Option<Vec<bool>>,
            Features<In>,
        ),
        Error,
    > {
        let dir = reference(name);
        let file = ModelFile::load(dir.join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
        let options = TypedSe3Transformer::<In, Hidden, Out>::options_of(&cfg)?;
        let sd = StateDict::load(dir.join("weights.safetensors"))?;
        let model = TypedSe3Transformer::<In, Hidden, Out>::load(&sd, options)?;
        let inputs =
            ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        let (b, n) = (inputs.batch(), inputs.nodes());
        let mut tokens = None;
        let x = match &inputs.feats {
            NodeFeats::Dense(t) => {
                let c = t.shape[2];
                Features::<In>::from_fn(b * n, |_, node, ch, _| t.data[node * c + ch] as f32)
            }
            NodeFeats::Degrees(map) => {
                let mut missing = false;
                let x = Features::<In>::from_fn(b * n, |d, node, ch, m| match map.get(&d.l) {
                    Some(t) => t.data[(node * d.channels + ch) * d.width() + m] as f32,
                    None => {
                        missing = true;
                        0.0
                    }
                });
                if missing {
                    return Err(Error::MissingInput { name: "feats" });
                }
                x
            }
            NodeFeats::Tokens { ids, .. } => {
                tokens = Some(ids.clone());
                Features::<In>::zeros(b * n)
            }
        };
        let coords: Vec<[f64; 3]> = (0..b).flat_map(|bi| inputs.points(bi)).collect();
        let mask = inputs.mask.as_ref().map(|m| m.data.clone());
        let mut run = model.compile()?;
        let extra = CloudInputs::of(&inputs);
        let y = match &tokens {
            Some(t) => run.forward_tokens(&coords, b, mask.as_deref(), t, extra)?,
            None => run.forward_with(&coords, b, mask.as_deref(), &x, extra)?,
        };
        let want = StateDict::load(dir.join("outputs.safetensors"))?;
        let single = Out::degrees().len() == 1;
        let mut worst = 0.0f64;
        for (d, block) in Out::degrees().into_iter().zip(y.blocks()) {
            let key = match fwd.return_type {
                Some(r) if r != d.l => continue,
                Some(_) => "out".to_string(),
                None if single => "out".to_string(),
                None => format!("type{}", d.l),
            };
            let mut got: Vec<f64> = block.data().iter().map(|&v| f64::from(v)).collect();
            if fwd.return_pooled {
                let w = d.dim();
                got = (0..b)
                    .flat_map(|bi| {
                        let rows: Vec<usize> = (bi * n..(bi + 1) * n)
                            .filter(|&i| mask.as_ref().is_none_or(|m| m[i]))
                            .collect();
                        let got = &got;
                        (0..w).map(move |k| {
                            rows.iter().map(|&i| got[i * w + k]).sum::<f64>()
                                / rows.len().max(1) as f64
                        })
                    })
                    .collect();
            }
            let t = want.get(&format!("{key}_f64")).ok_or(Error::MissingKey {
                key: format!("{name}: {key}_f64"),
                expected: vec![],
            })?;
            let err = rel_error(&got, &t.data);
            println!("typed {name} vs reference {key}_f64: max rel err {err:.2e}");
            worst = worst.max(err);
        }
        Ok((worst, run, coords, b, mask, x))
    }

    #[test]
    fn typed_assembly_of_se3t_basic_matches_the_reference_and_is_invariant() -> Result<(), Error> {
        let (err, mut run, coords, b, mask, x) =
            reference_parity::<Atoms, Hidden, Readout>("se3t_basic")?;
        assert!(err < TOL_F32, "typed se3t_basic off by {err:.2e}");
        let y = run.forward(&coords, b, mask.as_deref(), &x)?;
        let got: Vec<f64> = y.blocks()[0].data().iter().map(|&v| f64::from(v)).collect();

        // invariance of the type-0 output under a fresh rotation and translation
        let (mut r, seed) = rng();
        let rot = random_rotation(&mut r);
        let t = random_vector(&mut r, 2.0);
        let moved: Vec<[f64; 3]> = coords
            .iter()
            .map(|p| {
                let q = rot * nalgebra::Vector3::from(*p) + t;
                [q.x, q.y, q.z]
            })
            .collect();
        let y2 = run.forward(&moved, b, mask.as_deref(), &x)?;
        let got2: Vec<f64> = y2.blocks()[0]
            .data()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let inv = rel_error(&got2, &got);
        println!("seed {seed}: typed se3t_basic invariance error {inv:.2e}");
        assert!(inv < TOL_F32, "seed {seed}: invariance error {inv:.2e}");
        Ok(())
    }

    #[fiber(0:8, 1:8)]
    struct ScalarsVectors;
    #[fiber(0:4)]
    struct Atoms4;
    #[fiber(0:4, 1:4, 2:4, 3:4)]
    struct Degrees4;
    #[fiber(0:4, 1:4)]
    struct Out4;
    #[fiber(0:4, 1:2)]
    struct Small;

    #[test]
    fn typed_assembly_matches_the_references_with_vector_inputs_convs_norm_out_edges_reversible_kv_variants_causal_global_rotary_masks_tokens_bonds(
    ) -> Result<(), Error> {
        // input_degrees 2: feats of degrees 0 and 1 in, type0 and type1 out
        let (err, ..) =
            reference_parity::<ScalarsVectors, Hidden, ScalarsVectors>("se3t_input_degrees2")?;
        assert!(err < TOL_F32, "typed se3t_input_degrees2 off by {err:.2e}");
        // num_conv_layers 1, gated norms, norm_out, no self-attention, out_fiber_dict, pooled
        let (err, ..) = reference_parity::<Atoms, Hidden, Small>("se3t_convs_gated_pooled")?;
        assert!(
            err < TOL_F32,
            "typed se3t_convs_gated_pooled off by {err:.2e}"
        );
        // continuous edge features and Fourier-encoded distances in every radial network
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_fourier_edges")?;
        assert!(err < TOL_F32, "typed se3t_fourier_edges off by {err:.2e}");
        // reversible trunk (two streams, output norm switched on)
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_reversible")?;
        assert!(err < TOL_F32, "typed se3t_reversible off by {err:.2e}");
        // tied keys and values: the value convolution gives the keys too (no to_k weights)
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_tie_kv")?;
        assert!(err < TOL_F32, "typed se3t_tie_kv off by {err:.2e}");
        // one key/value head shared by the query heads
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_one_headed_kv")?;
        assert!(err < TOL_F32, "typed se3t_one_headed_kv off by {err:.2e}");
        // keys a linear map of the neighbour's features
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_linear_proj_keys")?;
        assert!(
            err < TOL_F32,
            "typed se3t_linear_proj_keys off by {err:.2e}"
        );
        // global tokens attended by degree 0
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_global_feats")?;
        assert!(err < TOL_F32, "typed se3t_global_feats off by {err:.2e}");
        // bonded neighbours ranked first, bond distances embedded into the edge features
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_sparse_adj")?;
        assert!(err < TOL_F32, "typed se3t_sparse_adj off by {err:.2e}");
        // edge tokens embedded into the radial networks' edge features
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_edge_tokens")?;
        assert!(err < TOL_F32, "typed se3t_edge_tokens off by {err:.2e}");
        // atom tokens embedded into the degree-0 input, two output degrees
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_tokens_out2")?;
        assert!(err < TOL_F32, "typed se3t_tokens_out2 off by {err:.2e}");
        // pairs excluded by a neighbour mask
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_neighbor_mask")?;
        assert!(err < TOL_F32, "typed se3t_neighbor_mask off by {err:.2e}");
        // four degrees, tied keys and values, a radius that cuts edges
        let (err, ..) = reference_parity::<Atoms4, Degrees4, Out4>("se3t_deg4_radius")?;
        assert!(err < TOL_F32, "typed se3t_deg4_radius off by {err:.2e}");
        // rotary position and distance embeddings, null keys and values, a position embedding
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_rotary_nullkv")?;
        assert!(err < TOL_F32, "typed se3t_rotary_nullkv off by {err:.2e}");
        // causal neighbour selection (node i sees j < i)
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_causal")?;
        assert!(err < TOL_F32, "typed se3t_causal off by {err:.2e}");
        Ok(())
    }

    #[test]
    fn typed_options_reject_other_fibers_and_untyped_options() -> Result<(), Error> {
        let file = ModelFile::load(reference("se3t_basic").join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        assert!(matches!(
            TypedSe3Transformer::<Atoms, Readout, Readout>::options_of(&cfg),
            Err(Error::Core(se3_core::Error::FiberMismatch { .. }))
        ));
        let mut reduce = cfg.clone();
        reduce.reduce_dim_out = true;
        assert!(matches!(
            TypedSe3Transformer::<Atoms, Hidden, Readout>::options_of(&reduce),
            Err(Error::NotTyped {
                option: "reduce_dim_out"
            })
        ));
        Ok(())
    }

    /// A config the reference folders do not have (degree 2 hidden, type-1 output, gated
    /// pre-norms, depth 2, a radius that cuts edges; null key/values, linear or tied keys, one
    /// key/value head, causal selection, global tokens, rotary embeddings, a position embedding,
    /// sparse (bonded) neighbours, bond-distance embeddings and all-pairs neighbours drawn at random), random weights, random masked
    /// clouds: the typed assembly gives the outputs of the float64 oracle.
    #[test]
    fn typed_assembly_equals_the_float64_oracle_on_random_clouds() -> Result<(), Error> {
        let (mut r, seed) = rng();
        // the library takes tied keys only from a convolution
        let linear_keys = r.gen_bool(0.5);
        let global_width = r.gen_bool(0.5).then(|| r.gen_range(1..4));
        let sparse = r.gen_bool(0.4);
        // all pairs (the library's default) now and then
        let neighbours = (!r.gen_bool(0.25)).then_some(5);
        let adj_degrees = r.gen_bool(0.4).then(|| r.gen_range(1..4));
        let rotary = match r.gen_range(0..4) {
            0 => (true, false),
            1 => (false, true),
            2 => (true, true),
            _ => (false, false),
        };
        let kwargs = serde_json::json!({
            "dim": 6, "heads": 2, "dim_head": 4, "depth": 2, "num_degrees": 3,
            "output_degrees": 2, "num_neighbors": neighbours, "valid_radius": 2.5,
            "norm_gated_scale": true, "attend_self": true,
            "use_null_kv": r.gen_bool(0.5), "linear_proj_keys": linear_keys,
            "tie_key_values": !linear_keys && r.gen_bool(0.5),
            "one_headed_key_values": r.gen_bool(0.5), "causal": r.gen_bool(0.5),
            "global_feats_dim": global_width,
            "rotary_position": rotary.0, "rotary_rel_dist": rotary.1,
            "num_positions": r.gen_bool(0.5).then_some(16),
            "attend_sparse_neighbors": sparse, "num_adj_degrees": adj_degrees,
            "adj_dim": if adj_degrees.is_some() { 2 } else { 0 }
        });
        println!("seed {seed}: {kwargs}");
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        let sd = StateDict::random_near_one(Se3TransformerNet::expected_keys(&cfg)?, &mut r)?;
        let options = TypedSe3Transformer::<Scalars, Wide, Vectors>::options_of(&cfg)?;
        let mut typed =
            TypedSe3Transformer::<Scalars, Wide, Vectors>::load(&sd, options)?.compile()?;
        // the float64 oracle of the library's forward
        let oracle = Se3TransformerOracle::from_state_dict(&cfg, &sd)?;
        let (b, n) = (2, r.gen_range(7..14));
        let coords: Vec<[f64; 3]> = (0..b * n)
            .map(|_| {
                let v = random_vector(&mut r, 1.5);
                [v.x, v.y, v.z]
            })
            .collect();
        let mask: Vec<bool> = (0..b * n).map(|i| i % n < 2 || r.gen_bool(0.8)).collect();
        // symmetric random bonds per cloud
        let mut bonds = vec![false; b * n * n];
        for bi in 0..b {
            for i in 0..n {
                for j in 0..i {
                    let on = r.gen_bool(0.2);
                    bonds[(bi * n + i) * n + j] = on;
                    bonds[(bi * n + j) * n + i] = on;
                }
            }
        }
        let takes_adj = sparse || adj_degrees.is_some();
        let feats: Vec<f64> = (0..b * n * 6).map(|_| r.gen_range(-1.0..1.0)).collect();
        let global = match global_width {
            Some(w) => {
                let g = r.gen_range(1..4);
                let v = (0..b * g * w).map(|_| r.gen_range(-1.0..1.0)).collect();
                Some(Tensor::new(vec![b, g, w], v)?)
            }
            None => None,
        };
        let inputs = ModelInputs {
            feats: NodeFeats::Dense(Tensor::new(vec![b, n, 6], feats.clone())?),
            coors: Tensor::new(vec![b, n, 3], coords.iter().flatten().copied().collect())?,
            mask: Some(BoolTensor {
                shape: vec![b, n],
                data: mask.clone(),
            }),
            adj_mat: takes_adj.then(|| BoolTensor {
                shape: vec![b, n, n],
                data: bonds.clone(),
            }),
            edges: None,
            neighbor_mask: None,
            global_feats: global.clone(),
        };
        let want = oracle.forward(&inputs, &Se3TransformerForward::default())?;
        let x = Features::<Scalars>::from_fn(b * n, |_, node, c, _| feats[node * 6 + c] as f32);
        let extra = CloudInputs {
            global: global.as_ref().map(|t| t.data.as_slice()),
            adjacency: takes_adj.then_some(bonds.as_slice()),
            ..CloudInputs::default()
        };
        let y = typed.forward_with(&coords, b, Some(&mask), &x, extra)?;
        for (d, block) in Vectors::degrees().into_iter().zip(y.blocks()) {
            let key = format!("type{}", d.l);
            let w = want
                .get(&key)
                .ok_or(Error::MissingInput { name: "typeN" })?;
            let got: Vec<f64> = block.data().iter().map(|&v| f64::from(v)).collect();
            let err = rel_error(&got, &w.data);
            println!("seed {seed}: typed vs float64 oracle {key}: max rel err {err:.2e}");
            assert!(err < TOL_F32, "seed {seed}: {key} off by {err:.2e}");
        }
        Ok(())
    }

    #[test]
    fn typed_forward_rejects_bad_clouds_with_typed_errors() -> Result<(), Error> {
        let (mut r, _) = rng();
        let options = Se3TransformerOptions {
            depth: 1,
            heads: 1,
            dim_head: 2,
            num_neighbors: Some(3),
            valid_radius: 10.0,
            num_conv_layers: 1,
            norm_out: true,
            ..Se3TransformerOptions::default()
        };
        let mut run =
            TypedSe3Transformer::<Atoms, Hidden, Readout>::new(options, &mut r)?.compile()?;
        let pts = |n: usize| -> Vec<[f64; 3]> { (0..n).map(|i| [i as f64, 0.5, -0.25]).collect() };
        let x = Features::<Atoms>::zeros(8);
        let mut nan = pts(8);
        nan[3][1] = f64::NAN;
        assert!(matches!(
            run.forward(&nan, 1, None, &x),
            Err(Error::NonFinite { name: "coords", .. })
        ));
        assert!(matches!(
            run.forward(&pts(7), 1, None, &x),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run.forward(&pts(8), 3, None, &x),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run.forward(&pts(8), 1, Some(&[true; 5]), &x),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run.forward(&pts(8), 8, None, &x),
            Err(Error::EmptyGraph { .. })
        ));
        assert!(matches!(
            run.forward(&[], 1, None, &Features::<Atoms>::zeros(0)),
            Err(Error::EmptyGraph { .. })
        ));
        assert!(matches!(
            run.forward_with_edges(&pts(8), 1, None, &x, Some(&[0.0; 64])),
            Err(Error::UnexpectedInput { name: "edges" })
        ));
        assert!(matches!(
            run.forward_tokens(&pts(8), 1, None, &[0; 8], CloudInputs::default()),
            Err(Error::UnexpectedInput { name: "tokens" })
        ));
        // a model of atom tokens: ids in range, one per node, and no feature input
        let tokens = Se3TransformerOptions {
            num_tokens: Some(3),
            ..options
        };
        let mut run_t =
            TypedSe3Transformer::<Atoms, Hidden, Readout>::new(tokens, &mut r)?.compile()?;
        let y = run_t.forward_tokens(
            &pts(8),
            1,
            None,
            &[0, 1, 2, 0, 1, 2, 0, 1],
            CloudInputs::default(),
        )?;
        assert!(y.blocks()[0].data().iter().all(|v| v.is_finite()));
        let bad = [0, 1, 2, 3, 1, 2, 0, 1];
        assert!(matches!(
            run_t.forward_tokens(&pts(8), 1, None, &bad, CloudInputs::default()),
            Err(Error::Core(se3_core::Error::BadIndex { name, .. })) if name == "tokens"
        ));
        assert!(matches!(
            run_t.forward_tokens(&pts(8), 1, None, &[0; 7], CloudInputs::default()),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run_t.forward(&pts(8), 1, None, &x),
            Err(Error::MissingInput { .. })
        ));
        // edge tokens: required by a model that embeds them, refused by one that does not
        assert!(matches!(
            run.forward_with(
                &pts(8),
                1,
                None,
                &x,
                CloudInputs {
                    edge_tokens: Some(&[0; 64]),
                    ..CloudInputs::default()
                }
            ),
            Err(Error::UnexpectedInput {
                name: "edge_tokens"
            })
        ));
        let edge_tokens = Se3TransformerOptions {
            num_edge_tokens: Some(2),
            edge_dim: 3,
            ..options
        };
        let mut run_e =
            TypedSe3Transformer::<Atoms, Hidden, Readout>::new(edge_tokens, &mut r)?.compile()?;
        assert!(matches!(
            run_e.forward(&pts(8), 1, None, &x),
            Err(Error::MissingInput {
                name: "edge_tokens"
            })
        ));
        let ids: Vec<i64> = (0..64).map(|i| i % 2).collect();
        let with_ids = CloudInputs {
            edge_tokens: Some(&ids),
            ..CloudInputs::default()
        };
        let y = run_e.forward_with(&pts(8), 1, None, &x, with_ids)?;
        assert!(y.blocks()[0].data().iter().all(|v| v.is_finite()));
        let bad: Vec<i64> = (0..64).map(|i| i % 3).collect();
        assert!(matches!(
            run_e.forward_with(
                &pts(8),
                1,
                None,
                &x,
                CloudInputs {
                    edge_tokens: Some(&bad),
                    ..CloudInputs::default()
                }
            ),
            Err(Error::Core(se3_core::Error::BadIndex { .. }))
        ));
        // the module path (a graph of its own) refuses what only the typed session feeds
        let causal = Se3TransformerOptions {
            causal: true,
            ..options
        };
        let model = TypedSe3Transformer::<Atoms, Hidden, Readout>::new(causal, &mut r)?;
        assert!(matches!(
            se3_core::module::Module::compile(&model, se3_core::module::Neighbors::knn(3)),
            Err(se3_core::Error::InvalidParameter { what: "causal", .. })
        ));
        // a cloud with fewer nodes than num_neighbors and all but one node masked: finite
        let y = run.forward(&pts(3), 1, Some(&[true, false, false]), &Features::zeros(3))?;
        assert!(y.blocks()[0].data().iter().all(|v| v.is_finite()));
        Ok(())
    }
}
