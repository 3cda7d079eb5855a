//! The `#[fiber]` attribute macro of se3: parse (`parse.rs`) into raw entries, validate
//! (`validate.rs`) collecting every problem with its span, expand (`expand.rs`) into a unit
//! struct implementing `se3::fiber::Fiber`. On invalid input the struct is still emitted
//! (from the valid entries), next to the `compile_error!`s.

use proc_macro::TokenStream;

mod expand;
mod module;
mod parse;
mod validate;

/// Declares a fiber: a unit struct implementing `se3::fiber::Fiber`, with one
/// `HasDegree<Degree<L>>` impl per degree.
///
/// ```text
/// use se3::prelude::*;
///
/// #[fiber(0:16)]          pub struct Atoms;   // 16 scalar channels (SE(3))
/// #[fiber(0:32, 1:8)]     pub struct Hidden;  // 32 scalars + 8 vectors
/// #[fiber(0 e:8, 1o:4)]   pub struct Polar;   // E(3): parity e (even) / o (odd)
/// #[fiber("0e:8, 1o:4")]  pub struct Polar2;  // the same, in FiberSpec notation
/// ```
///
/// Entries are `l:channels` (SE(3)) or `l p:channels` with p = `e`/`o` (E(3)); `1o` may be
/// glued, `0e` may not (Rust lexes it as a float exponent) — write `0 e` or use the string
/// form. Degrees must be at most 10, listed once each, in increasing order, with at least
/// one channel, and either every degree has a parity or none. Every violation is a compile
/// error on the offending token. The struct derives `Debug, Clone, Copy, Default,
/// PartialEq, Eq, Hash`; other attributes (docs) are kept.
#[proc_macro_attribute]
pub fn fiber(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = match syn::parse::<syn::ItemStruct>(item) {
        Ok(item) => item,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                "`#[fiber(...)]` goes on a unit struct, such as `pub struct Hidden;`",
            );
            return e.to_compile_error().into();
        }
    };
    let (item, mut errors) = validate::validate_item(item);
    let (spec, error) = validate::validate(parse::parse_spec(args.into()));
    errors.extend(error);
    let mut out = expand::expand(&item, &spec);
    for e in errors {
        out.extend(e.to_compile_error());
    }
    out.into()
}

/// An anonymous fiber in type position: `fiber_type!(0:32, 1:8)` is a type implementing
/// `se3::fiber::Fiber` with those degrees, the same grammar and checks as `#[fiber(...)]`.
///
/// ```text
/// fn norms(h: &Features<fiber_type!(0:32, 1:8)>) -> Invariants { h.norms::<Degree<1>>() }
/// ```
///
/// It expands to `se3::fiber::Inline<...>` with one slot per degree 0..=10, which is what
/// compiler messages then show; declare a named fiber with `#[fiber]` for anything used
/// more than once. Every problem is reported, and the type of the valid entries is still
/// produced.
#[proc_macro]
pub fn fiber_type(args: TokenStream) -> TokenStream {
    let (spec, error) = validate::validate(parse::parse_spec(args.into()));
    let ty = expand::expand_inline(&spec);
    match error {
        Some(e) => {
            let errors = e.to_compile_error();
            quote::quote!(<#ty as ::se3::fiber::inline::WithErrors<{ #errors 0 }>>::Type).into()
        }
        None => ty.into(),
    }
}

/// Makes a struct of layers a module: implements `se3::module::Module` (parameters named by
/// field path in PyTorch state-dict form, `conv1.…`, `blocks.0.attn.…`; load, save, the
/// parameter list, the layers' fibers), `se3::module::Init` and an inherent
/// `fn new(rng) -> Result<Self, se3::Error>` (fresh weights).
///
/// ```text
/// #[derive(Module)]
/// struct Net {
///     conv1: Conv<Atoms, Hidden>,
///     norm: Norm<Hidden>,
///     #[module(repeat = 2)]
///     blocks: Vec<Block>,
///     #[module(init = |rng| Conv::new(ConvOptions { pool: Pool::Sum, ..Default::default() }, rng))]
///     conv2: Conv<Hidden, Out>,
/// }
/// ```
///
/// Fields are layers, `#[derive(Module)]` structs, or a `Vec`, array, `Option` or `Box` of
/// them; a tuple struct's fields are named `0`, `1`, …. Options: `#[module(rename = "net")]`
/// (its state-dict name), `#[module(init = |rng| ..)]` (a closure returning
/// `Result<T, se3::Error>`), `#[module(repeat = n)]` (`n` fresh modules in a `Vec`),
/// `#[module(skip)]` (not part of the network; `Default::default()`). A field of another
/// type is a compile error that names it.
#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(item: TokenStream) -> TokenStream {
    match syn::parse::<syn::DeriveInput>(item) {
        Ok(input) => module::derive(input).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
