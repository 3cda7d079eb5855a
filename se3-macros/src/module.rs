//! `#[derive(Module)]`: parse the struct's fields and their `#[module(..)]` options, validate
//! (collecting every problem, spanned on the field), expand into `se3::module::Module` and
//! `se3::module::Init` impls and an inherent `new(rng)`.
//!
//! Every field goes through `se3::module::ModuleField<marker>`, where the marker is a unit
//! struct named after the field, so a field whose type is not a module is reported once, at
//! the field, with its name in the message.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, Ident, LitStr, Type};

/// How a field gets its fresh value.
enum Init {
    /// `<T as Init>::init(rng)`.
    Default,
    /// `#[module(init = <closure>)]`.
    With(Expr),
    /// `#[module(repeat = <n>)]` for a `Vec`.
    Repeat(Expr),
}

/// One field of the struct.
struct Field {
    /// How it is accessed: `conv1` or `0`.
    member: syn::Member,
    /// Its state-dict name.
    name: String,
    /// The marker type named after it.
    marker: Ident,
    ty: Type,
    init: Init,
    /// `#[module(skip)]`: not part of the network, `Default::default()`.
    skip: bool,
}

/// Types that are never modules, reported by name before type checking.
const PLAIN: &[&str] = &[
    "bool", "char", "str", "String", "f32", "f64", "u8", "u16", "u32", "u64", "u128", "usize",
    "i8", "i16", "i32", "i64", "i128", "isize",
];

/// The last path segment of a plain (non-module) type, if `ty` is one.
fn plain_type(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            let name = last.ident.to_string();
            (last.arguments.is_none() && PLAIN.contains(&name.as_str())).then_some(name)
        }
        Type::Reference(_) => Some("a reference".into()),
        Type::Tuple(_) => Some("a tuple".into()),
        Type::Ptr(_) => Some("a raw pointer".into()),
        Type::BareFn(_) => Some("a function pointer".into()),
        _ => None,
    }
}

/// Reads the `#[module(..)]` options of a field into `field`.
fn parse_options(attrs: &[syn::Attribute], field: &mut Field, errors: &mut Vec<syn::Error>) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("module")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let s: LitStr = meta.value()?.parse()?;
                field.name = s.value();
            } else if meta.path.is_ident("init") {
                field.init = Init::With(meta.value()?.parse()?);
            } else if meta.path.is_ident("repeat") {
                field.init = Init::Repeat(meta.value()?.parse()?);
            } else if meta.path.is_ident("skip") {
                field.skip = true;
            } else {
                return Err(meta.error(
                    "unknown `module` option: expected `rename = \"..\"`, `init = |rng| ..`, `repeat = n` or `skip`",
                ));
            }
            Ok(())
        });
        if let Err(e) = r {
            errors.push(e);
        }
    }
}

/// The fields with their options; problems are collected in `errors`.
fn fields(input: &DeriveInput, errors: &mut Vec<syn::Error>) -> Vec<Field> {
    let data = match &input.data {
        Data::Struct(s) => s,
        _ => {
            errors.push(syn::Error::new(
                input.ident.span(),
                "`#[derive(Module)]` goes on a struct whose fields are layers or modules",
            ));
            return Vec::new();
        }
    };
    let list: Vec<&syn::Field> = match &data.fields {
        Fields::Named(f) => f.named.iter().collect(),
        Fields::Unnamed(f) => f.unnamed.iter().collect(),
        Fields::Unit => Vec::new(),
    };
    let mut out = Vec::new();
    for (i, f) in list.into_iter().enumerate() {
        let (member, name, marker) = match &f.ident {
            Some(id) => {
                let name = id.to_string();
                let bare = name.trim_start_matches("r#").to_string();
                (
                    syn::Member::Named(id.clone()),
                    bare.clone(),
                    Ident::new(&bare, id.span()),
                )
            }
            None => (
                syn::Member::Unnamed(syn::Index::from(i)),
                i.to_string(),
                format_ident!("_{}", i, span = f.ty.span()),
            ),
        };
        let mut field = Field {
            member,
            name,
            marker,
            ty: f.ty.clone(),
            init: Init::Default,
            skip: false,
        };
        parse_options(&f.attrs, &mut field, errors);
        if !field.skip {
            if let Some(what) = plain_type(&f.ty) {
                errors.push(syn::Error::new(
                    f.ty.span(),
                    format!(
                        "field `{}` of a `#[derive(Module)]` struct has type `{what}`, which is not a layer or module \
                         (mark a field that is not part of the network `#[module(skip)]`)",
                        field.marker
                    ),
                ));
                field.skip = true;
            }
        }
        out.push(field);
    }
    out
}

/// The expansion of `#[derive(Module)]`.
pub fn derive(input: DeriveInput) -> TokenStream {
    let mut errors = Vec::new();
    let fields = fields(&input, &mut errors);
    let name = &input.ident;
    let vis = &input.vis;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    let modules: Vec<&Field> = fields.iter().filter(|f| !f.skip).collect();
    let markers = modules.iter().map(|f| &f.marker);
    let as_module = |f: &Field, mutable: bool| {
        let (ty, marker, member) = (&f.ty, &f.marker, &f.member);
        let span = ty.span();
        if mutable {
            quote_spanned!(span=> <#ty as ::se3::module::ModuleField<#marker>>::as_module_mut(&mut self.#member))
        } else {
            quote_spanned!(span=> <#ty as ::se3::module::ModuleField<#marker>>::as_module(&self.#member))
        }
    };
    let visit = modules.iter().map(|f| {
        let (m, key) = (as_module(f, false), format!("{}.", f.name));
        quote!(#m.visit_params(&::std::format!("{}{}", prefix, #key), f);)
    });
    let visit_mut = modules.iter().map(|f| {
        let (m, key) = (as_module(f, true), format!("{}.", f.name));
        quote!(#m.visit_params_mut(&::std::format!("{}{}", prefix, #key), f)?;)
    });
    let layers = modules.iter().map(|f| {
        let (m, key) = (as_module(f, false), format!("{}.", f.name));
        quote!(#m.visit_layers(&::std::format!("{}{}", prefix, #key), f);)
    });
    let inits = fields.iter().map(|f| {
        let (member, ty, marker) = (&f.member, &f.ty, &f.marker);
        let value = if f.skip {
            quote!(::std::default::Default::default())
        } else {
            match &f.init {
                Init::Default => quote_spanned!(ty.span()=>
                    <#ty as ::se3::module::ModuleField<#marker>>::init_field(rng)?),
                Init::With(e) => quote!(::se3::module::init_with(rng, #e)?),
                Init::Repeat(n) => quote!(::se3::module::init_repeat(rng, #n)?),
            }
        };
        quote!(#member: #value)
    });
    let errors = errors.into_iter().map(|e| e.to_compile_error());
    quote! {
        const _: () = {
            #(
                #[allow(non_camel_case_types, dead_code)]
                struct #markers;
            )*

            impl #impl_g ::se3::module::Module for #name #ty_g #where_c {
                fn visit_params(
                    &self,
                    prefix: &str,
                    f: &mut dyn ::std::ops::FnMut(&str, &::se3::layers::Param),
                ) {
                    #(#visit)*
                }

                fn visit_params_mut(
                    &mut self,
                    prefix: &str,
                    f: &mut dyn ::std::ops::FnMut(&str, &mut ::se3::layers::Param)
                        -> ::std::result::Result<(), ::se3::Error>,
                ) -> ::std::result::Result<(), ::se3::Error> {
                    #(#visit_mut)*
                    ::std::result::Result::Ok(())
                }

                fn visit_layers(
                    &self,
                    prefix: &str,
                    f: &mut dyn ::std::ops::FnMut(::se3::module::LayerEntry),
                ) {
                    #(#layers)*
                }
            }

            impl #impl_g ::se3::module::Init for #name #ty_g #where_c {
                fn init(
                    rng: &mut dyn ::se3::module::RngCore,
                ) -> ::std::result::Result<Self, ::se3::Error> {
                    ::std::result::Result::Ok(Self { #(#inits),* })
                }
            }
        };

        impl #impl_g #name #ty_g #where_c {
            /// The module with fresh weights (each field's `Init`, or its `#[module(init)]`).
            ///
            /// # Errors
            /// Those of the layers' constructors.
            #[allow(dead_code)]
            #vis fn new<R: ::se3::module::RngCore>(rng: &mut R) -> ::std::result::Result<Self, ::se3::Error> {
                <Self as ::se3::module::Init>::init(rng)
            }
        }

        #(#errors)*
    }
}
