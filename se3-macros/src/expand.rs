//! Expansion of a validated fiber into the struct and its `::se3::fiber` impls.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::validate::{Parity, Spec, MAX_DEGREE};

fn group(spec: &Spec) -> TokenStream {
    if spec.entries.iter().any(|e| e.parity.is_some()) {
        quote!(::se3::fiber::E3)
    } else {
        quote!(::se3::fiber::Se3)
    }
}

fn parity_type(p: Option<Parity>) -> TokenStream {
    match p {
        None => quote!(::se3::fiber::NoParity),
        Some(Parity::Even) => quote!(::se3::fiber::Even),
        Some(Parity::Odd) => quote!(::se3::fiber::Odd),
    }
}

/// The type-level irrep list `Cons<Irrep<Degree<L>, P>, ...>` of the spec.
fn irreps(spec: &Spec) -> TokenStream {
    spec.entries
        .iter()
        .rev()
        .fold(quote!(::se3::fiber::Nil), |tail, e| {
            let l = e.l;
            let p = parity_type(e.parity);
            quote!(::se3::fiber::Cons<::se3::fiber::Irrep<::se3::fiber::Degree<#l>, #p>, #tail>)
        })
}

/// The anonymous fiber type `::se3::fiber::Inline<G, Irreps, slot 0, ..., slot 10>` of
/// `fiber_type!(...)`.
pub fn expand_inline(spec: &Spec) -> TokenStream {
    let group = group(spec);
    let irreps = irreps(spec);
    let slots = (0..=MAX_DEGREE as usize).map(|l| match spec.entries.iter().find(|e| e.l == l) {
        Some(e) => {
            let c = e.channels;
            let p = parity_type(e.parity);
            quote!(::se3::fiber::Ch<#c, #p>)
        }
        None => quote!(::se3::fiber::Absent),
    });
    quote!(::se3::fiber::Inline<#group, #irreps, #(#slots),*>)
}

/// The unit struct (with the user's attributes and visibility) plus `Fiber` and one
/// `HasDegree<Degree<L>>` impl per degree.
pub fn expand(item: &syn::ItemStruct, spec: &Spec) -> TokenStream {
    let attrs = &item.attrs;
    let vis = &item.vis;
    let name = &item.ident;
    let name_str = name.to_string();
    let group = group(spec);
    let parity_value = |p: Option<Parity>| match p {
        None => quote!(::core::option::Option::None),
        Some(Parity::Even) => quote!(::core::option::Option::Some(::se3::fiber::Parity::Even)),
        Some(Parity::Odd) => quote!(::core::option::Option::Some(::se3::fiber::Parity::Odd)),
    };
    let specs = spec.entries.iter().map(|e| {
        let (l, c, p) = (e.l, e.channels, parity_value(e.parity));
        quote!(::se3::fiber::DegreeSpec::new(#l, #c, #p))
    });
    let irreps = irreps(spec);
    let has_degree = spec.entries.iter().enumerate().map(|(index, e)| {
        let (l, c, p) = (e.l, e.channels, parity_type(e.parity));
        quote! {
            #[diagnostic::do_not_recommend]
            impl ::se3::fiber::HasDegree<::se3::fiber::Degree<#l>> for #name {
                const CHANNELS: usize = #c;
                const INDEX: usize = #index;
                type Parity = #p;
            }
        }
    });
    // Spanned on the user's name, so that "`Atoms` is defined here" points at `struct Atoms;`.
    let item = quote_spanned! {name.span()=>
        #(#attrs)*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        #vis struct #name;
    };
    quote! {
        #item

        impl ::se3::fiber::Fiber for #name {
            const NAME: &'static str = #name_str;
            const DEGREES: ::se3::fiber::DegreeTable =
                ::se3::fiber::DegreeTable::new(&[#(#specs),*]);
            type Group = #group;
            type Irreps = #irreps;
        }

        #(#has_degree)*
    }
}
