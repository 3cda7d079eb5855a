//! Modules: a network declared as a struct of layers, with a typed forward written once.
//!
//! `#[derive(Module)]` (se3-macros) on a struct whose fields are layers, other modules, `Vec`s,
//! arrays, `Option`s or `Box`es of them implements [`Module`] and [`Init`]:
//!
//! - parameter names are the field paths in PyTorch's state-dict form (`conv1.…`,
//!   `blocks.0.attn.…`; a tuple struct's fields are `0`, `1`, …; `#[module(rename = "net")]`
//!   renames a field), each layer's own keys below them, so a PyTorch checkpoint of the same
//!   tree loads by name ([`Module::load`]) and [`Module::save`] writes one;
//! - [`Module::parameters`] lists `(name, Param)` for optimizers;
//!   [`Module::visit_params_mut`] changes them in place;
//! - `Net::new(&mut rng)` builds the tree with fresh weights (each field's [`Init`], or
//!   `#[module(init = |rng| …)]`, or `#[module(repeat = n)]` for a `Vec`);
//! - [`Module::layers`] lists every layer's path, kind and fibers; `save` writes that list
//!   next to the weights (safetensors metadata `se3.fibers`) and `load` checks it, so a
//!   checkpoint whose fibers disagree with the struct is [`Error::CheckpointFibers`] naming
//!   the field.
//!
//! The forward is [`Forward::forward`], plain Rust over typed graph values
//! ([`GraphFeatures<F>`]): `self.conv1.apply(g, &x)?` adds the layer to the graph of the
//! context `g` ([`GraphCtx`]), which holds the neighbour graph and the kernel basis declared
//! once by [`Neighbors`]. [`Module::compile`] builds the graph once (node and edge counts are
//! dynamic) and returns a [`Compiled`] module that runs on any [`Cloud`]:
//!
//! ```text
//! let mut net = Net::new(&mut rng)?.compile(Neighbors::knn(16))?;
//! let y: Features<Out> = net.forward(&cloud, &x)?;
//! ```
//!
//! [`GraphFeatures<F>`]: crate::layers::GraphFeatures

mod apply;
mod checkpoint;
mod cloud;
mod compiled;
mod context;
mod leaf;

pub use cloud::{Cloud, Neighbors};
pub use compiled::Compiled;
pub use context::GraphCtx;

pub use rand::RngCore;

use crate::fiber::{Fiber, FiberSpec};
use crate::layers::{GraphFeatures, Param, ParamSource};
use crate::Error;

/// `Result` with se3's [`Error`] by default (in `se3::prelude`, so a forward reads
/// `-> Result<GraphFeatures<Out>>`; other error types still work as the second parameter).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One layer of a module tree: where it sits, what it is and its fibers (the metadata saved
/// beside the weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// The field path, `conv1` or `blocks.0.attn` (no trailing dot).
    pub path: String,
    /// The layer kind, `Conv`, `Norm`, `Linear`, ….
    pub kind: &'static str,
    /// The input fiber.
    pub fiber_in: FiberSpec,
    /// The output fiber.
    pub fiber_out: FiberSpec,
    /// The layer's address while the tree is borrowed (to find its path while building).
    pub(crate) address: usize,
}

impl LayerEntry {
    /// The entry of `layer` at weight prefix `prefix` (`"conv1."` gives the path `conv1`), for
    /// a [`Module::visit_layers`] written by hand (a composite model over run-time layers).
    pub fn new<T: ?Sized>(
        layer: &T,
        prefix: &str,
        kind: &'static str,
        fiber_in: FiberSpec,
        fiber_out: FiberSpec,
    ) -> Self {
        LayerEntry {
            path: prefix.strip_suffix('.').unwrap_or(prefix).to_string(),
            kind,
            fiber_in,
            fiber_out,
            address: (layer as *const T).cast::<()>() as usize,
        }
    }
}

/// A tree of layers with named parameters (implemented by `#[derive(Module)]`, by every
/// typed layer, and by `Vec`, arrays, `Option` and `Box` of modules).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a module (a layer, a `#[derive(Module)]` struct, or a `Vec`, array, `Option` or `Box` of them)",
    label = "not a layer or module",
    note = "fields of a `#[derive(Module)]` struct must be layers (`Conv<In, Out>`, `Norm<F>`, `Linear<In, Out>`, …) or modules"
)]
pub trait Module {
    /// Visits every parameter as `(<prefix><key>, param)`, in a fixed order.
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param));

    /// Visits every parameter mutably (load, optimizer steps), as [`Module::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error>;

    /// Visits every layer; `prefix` is the path so far (`""` or `"blocks.0."`).
    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry));

    /// Every parameter with its state-dict name.
    fn parameters(&self) -> Vec<(String, Param)> {
        let mut out = Vec::new();
        self.visit_params("", &mut |k, p| out.push((k.to_string(), p.clone())));
        out
    }

    /// Every layer with its path, kind and fibers.
    fn layers(&self) -> Vec<LayerEntry> {
        let mut out = Vec::new();
        self.visit_layers("", &mut |e| out.push(e));
        out
    }

    /// Sets every parameter from `src` by its state-dict name (shapes checked, values
    /// finite).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape` naming the key; `NonFiniteWeight`.
    fn load_params(&mut self, src: &mut dyn ParamSource) -> Result<(), Error> {
        self.visit_params_mut("", &mut |key, p| {
            let data = src.get(key, &p.shape)?;
            *p = Param::new(std::mem::take(&mut p.key), p.shape.clone(), data)?;
            Ok(())
        })
    }

    /// Loads a safetensors checkpoint (a PyTorch state dict saved with safetensors, or a
    /// file of [`Module::save`]): every parameter by name; if the file has fiber metadata,
    /// every layer's fibers are checked first.
    ///
    /// # Errors
    /// `Io`, `InvalidSafetensors`, `CheckpointMetadata`; `CheckpointFibers` naming the
    /// first field whose fibers differ; `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<(), Error>
    where
        Self: Sized,
    {
        checkpoint::load(self, path.as_ref())
    }

    /// Writes every parameter to a safetensors file under its state-dict name, with the
    /// layers' fibers as metadata `se3.fibers` (`{"conv1": {"layer": "Conv", "in": "0:4",
    /// "out": "0:16, 1:8"}, …}`).
    ///
    /// # Errors
    /// `Io` if the file cannot be written.
    fn save(&self, path: impl AsRef<std::path::Path>) -> Result<(), Error>
    where
        Self: Sized,
    {
        checkpoint::save(self, path.as_ref())
    }

    /// Builds the graph of [`Forward::forward`] once, on the neighbour graph `neighbors`, and
    /// returns the module ready to run on clouds of any size (its weights copied into the
    /// graph). Takes `&self`, so an inherent `compile(&self)` of a type is still found first.
    ///
    /// # Errors
    /// Those of the forward (graph build) and `DegreeTooHigh` for the kernel basis.
    fn compile(&self, neighbors: Neighbors) -> Result<Compiled<Self>, Error>
    where
        Self: Forward + Sized,
    {
        Compiled::new(self, neighbors)
    }
}

/// A module built with fresh weights from a random number generator.
pub trait Init: Sized {
    /// The module with fresh weights (each layer's default options).
    ///
    /// # Errors
    /// Those of the layers' constructors.
    fn init(rng: &mut dyn RngCore) -> Result<Self, Error>;
}

/// The typed forward of a module: features of `In` on the nodes of a graph to features of
/// `Out`, written with the layers' `apply` on the context's graph.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no typed forward",
    label = "`{Self}` does not implement `Forward`",
    note = "write `impl Forward for {Self} {{ type In = ..; type Out = ..; fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<Self::In>) -> Result<GraphFeatures<Self::Out>, Error> {{ .. }} }}`"
)]
pub trait Forward: Module {
    /// The input fiber.
    type In: Fiber;
    /// The output fiber.
    type Out: Fiber;

    /// The graph of the module applied to `x`.
    ///
    /// # Errors
    /// Those of the layers' `apply`.
    fn forward(
        &self,
        g: &mut GraphCtx<'_>,
        x: GraphFeatures<Self::In>,
    ) -> Result<GraphFeatures<Self::Out>, Error>;
}

/// Calls `f` with the generator (the expansion of `#[module(init = |rng| …)]`): `rng` is a
/// `&mut &mut dyn RngCore`, which every `&mut impl Rng` constructor takes.
///
/// # Errors
/// Those of `f`.
pub fn init_with<T>(
    mut rng: &mut dyn RngCore,
    f: impl FnOnce(&mut &mut dyn RngCore) -> Result<T, Error>,
) -> Result<T, Error> {
    f(&mut rng)
}

/// `n` modules with fresh weights (the expansion of `#[module(repeat = n)]`).
///
/// # Errors
/// Those of `T::init`.
pub fn init_repeat<T: Init>(rng: &mut dyn RngCore, n: usize) -> Result<Vec<T>, Error> {
    (0..n).map(|_| T::init(rng)).collect()
}

/// A field of a `#[derive(Module)]` struct: a module with fresh weights (checked per field, so
/// an unsupported field type is reported at the field with its name, `Field` being a marker
/// named after it). The derive reaches every field through it.
#[diagnostic::on_unimplemented(
    message = "field `{Field}` of a `#[derive(Module)]` struct has type `{Self}`, which is not a module",
    label = "not a layer or module",
    note = "fields must be layers (`Conv<In, Out>`, `Norm<F>`, `Linear<In, Out>`, ..), `#[derive(Module)]` structs, or a `Vec`, array, `Option` or `Box` of them"
)]
pub trait ModuleField<Field> {
    /// The field as a module.
    fn as_module(&self) -> &dyn Module;
    /// The field as a mutable module.
    fn as_module_mut(&mut self) -> &mut dyn Module;
    /// The field with fresh weights.
    ///
    /// # Errors
    /// Those of its constructor.
    fn init_field(rng: &mut dyn RngCore) -> Result<Self, Error>
    where
        Self: Sized;
}

#[diagnostic::do_not_recommend]
impl<Field, T: Module + Init> ModuleField<Field> for T {
    fn as_module(&self) -> &dyn Module {
        self
    }

    fn as_module_mut(&mut self) -> &mut dyn Module {
        self
    }

    fn init_field(rng: &mut dyn RngCore) -> Result<Self, Error> {
        T::init(rng)
    }
}

impl<T: Module> Module for Vec<T> {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (i, m) in self.iter().enumerate() {
            m.visit_params(&format!("{prefix}{i}."), f);
        }
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_params_mut(&format!("{prefix}{i}."), f)?;
        }
        Ok(())
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        for (i, m) in self.iter().enumerate() {
            m.visit_layers(&format!("{prefix}{i}."), f);
        }
    }
}

impl<T: Module, const N: usize> Module for [T; N] {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (i, m) in self.iter().enumerate() {
            m.visit_params(&format!("{prefix}{i}."), f);
        }
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_params_mut(&format!("{prefix}{i}."), f)?;
        }
        Ok(())
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        for (i, m) in self.iter().enumerate() {
            m.visit_layers(&format!("{prefix}{i}."), f);
        }
    }
}

impl<T: Module> Module for Option<T> {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        if let Some(m) = self {
            m.visit_params(prefix, f);
        }
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self {
            Some(m) => m.visit_params_mut(prefix, f),
            None => Ok(()),
        }
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        if let Some(m) = self {
            m.visit_layers(prefix, f);
        }
    }
}

impl<T: Module> Module for Box<T> {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        (**self).visit_params(prefix, f);
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        (**self).visit_params_mut(prefix, f)
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        (**self).visit_layers(prefix, f);
    }
}

/// A `Vec` starts empty (`#[module(repeat = n)]` or `init` give it layers).
impl<T> Init for Vec<T> {
    fn init(_rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(Vec::new())
    }
}

/// An `Option` starts as `None` (`#[module(init = …)]` gives it a layer).
impl<T> Init for Option<T> {
    fn init(_rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(None)
    }
}

impl<T: Init> Init for Box<T> {
    fn init(rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(Box::new(T::init(rng)?))
    }
}

impl<T: Init, const N: usize> Init for [T; N] {
    fn init(rng: &mut dyn RngCore) -> Result<Self, Error> {
        let v: Vec<T> = init_repeat(rng, N)?;
        match v.try_into() {
            Ok(a) => Ok(a),
            // `init_repeat` returned N items
            Err(_) => unreachable!("init_repeat gives N modules"),
        }
    }
}
