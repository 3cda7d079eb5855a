//! Validation of parsed fiber entries: every problem is collected with a span on the
//! offending token, and a sanitised fiber is returned alongside so that expansion still
//! emits the struct (one mistake, one message).
//!
//! Rules (the same as `se3::fiber::FiberSpec`):
//! - at least one degree;
//! - degree at most `MAX_DEGREE` = 10 (span: the degree);
//! - at least 1 channel (span: the channel count);
//! - each degree once (span: the second occurrence);
//! - degrees in increasing order (span: the degree that comes too late). They are not
//!   sorted silently, because the written order is the block order of `Features`;
//! - parity letter `e` or `o` (span: the letter);
//! - all degrees with a parity (E(3)) or none (SE(3)) (span: the first degree that
//!   differs from the first entry).

use proc_macro2::Span;

use crate::parse::{RawEntry, RawSpec};

/// The highest supported degree; equal to `se3::fiber::MAX_DEGREE` (proc-macro crates
/// cannot share constants; a ui test pins the two together).
pub const MAX_DEGREE: u64 = 10;

/// Parity of a validated degree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    Even,
    Odd,
}

/// A validated degree entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub l: usize,
    pub channels: usize,
    pub parity: Option<Parity>,
}

/// A validated (or sanitised) fiber: sorted unique degrees, all with or all without parity.
pub struct Spec {
    pub entries: Vec<Entry>,
}

/// Validates `raw`, returning the sanitised spec and the combined error, if any.
pub fn validate(raw: RawSpec) -> (Spec, Option<syn::Error>) {
    let mut errors = raw.errors;
    if raw.entries.is_empty() && errors.is_empty() {
        errors.push(syn::Error::new(
            raw.span,
            "a fiber needs at least one degree, such as `#[fiber(0:16)]` or `#[fiber(0:32, 1:8)]`",
        ));
    }
    let with_parity = raw.entries.first().is_some_and(|e| e.parity.is_some());
    let mut entries: Vec<Entry> = Vec::new();
    let mut previous: Option<u64> = None;
    for e in &raw.entries {
        let parity = check_parity(e, with_parity, raw.entries.first(), &mut errors);
        if e.l > MAX_DEGREE {
            errors.push(syn::Error::new(
                e.l_span,
                format!("degree {} is above the supported maximum {MAX_DEGREE}", e.l),
            ));
            continue;
        }
        if e.channels == 0 {
            errors.push(syn::Error::new(
                e.channels_span,
                format!(
                    "degree {} has 0 channels: give it at least 1, or leave it out",
                    e.l
                ),
            ));
            continue;
        }
        if entries.iter().any(|x| x.l as u64 == e.l) {
            errors.push(syn::Error::new(
                e.l_span,
                format!("degree {} is listed twice: list each degree once", e.l),
            ));
            continue;
        }
        if let Some(p) = previous {
            if e.l < p {
                errors.push(syn::Error::new(
                    e.l_span,
                    format!(
                        "degrees must be listed in increasing order: {} comes after {p}",
                        e.l
                    ),
                ));
            }
        }
        previous = Some(previous.map_or(e.l, |p| p.max(e.l)));
        let channels = match usize::try_from(e.channels) {
            Ok(c) => c,
            Err(_) => {
                errors.push(syn::Error::new(e.channels_span, "channel count too large"));
                continue;
            }
        };
        entries.push(Entry {
            l: e.l as usize,
            channels,
            parity,
        });
    }
    entries.sort_by_key(|e| e.l);
    let error = errors.into_iter().reduce(|mut a, b| {
        a.combine(b);
        a
    });
    (Spec { entries }, error)
}

/// The parity of `e`, reporting an unknown letter or a parity that differs in presence
/// from the first entry's; the sanitised result follows the first entry.
fn check_parity(
    e: &RawEntry,
    with_parity: bool,
    first: Option<&RawEntry>,
    errors: &mut Vec<syn::Error>,
) -> Option<Parity> {
    let parity = match &e.parity {
        None => None,
        Some(p) => match p.letter.as_str() {
            "e" => Some(Parity::Even),
            "o" => Some(Parity::Odd),
            other => {
                errors.push(syn::Error::new(
                    p.span,
                    format!("unknown parity `{other}`: write `e` (even) or `o` (odd)"),
                ));
                Some(Parity::Even)
            }
        },
    };
    if parity.is_some() != with_parity {
        let first_l = first.map_or(0, |f| f.l);
        let msg = if with_parity {
            format!(
                "degree {} has no parity, but degree {first_l} has one: in an E(3) fiber every degree has a parity (`{} e:..` or `{}o:..`)",
                e.l, e.l, e.l
            )
        } else {
            format!(
                "degree {} has a parity, but degree {first_l} has none: an SE(3) fiber has no parity letters, an E(3) fiber one on every degree",
                e.l
            )
        };
        errors.push(syn::Error::new(span_of(e), msg));
    }
    with_parity.then(|| parity.unwrap_or(Parity::Even))
}

fn span_of(e: &RawEntry) -> Span {
    e.l_span
}

/// Checks that `#[fiber]` sits on a unit struct without generics or derives of its own,
/// returning the struct made so (fields, generics and derives dropped) and the problems.
pub fn validate_item(mut item: syn::ItemStruct) -> (syn::ItemStruct, Vec<syn::Error>) {
    let mut errors = Vec::new();
    if !matches!(item.fields, syn::Fields::Unit) {
        errors.push(syn::Error::new_spanned(
            &item.fields,
            format!(
                "a fiber is a unit struct (`pub struct {0};`): its data lives in `Features<{0}>`",
                item.ident
            ),
        ));
    }
    if !item.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &item.generics,
            "a fiber takes no generic parameters",
        ));
    }
    for attr in item.attrs.iter().filter(|a| a.path().is_ident("derive")) {
        errors.push(syn::Error::new_spanned(
            attr,
            "a fiber derives Debug, Clone, Copy, Default, PartialEq, Eq and Hash itself: remove this derive",
        ));
    }
    item.attrs.retain(|a| !a.path().is_ident("derive"));
    item.fields = syn::Fields::Unit;
    item.generics = syn::Generics::default();
    (item, errors)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;
    use crate::parse::parse_spec;

    /// The validated entries as (l, channels, parity), and the error messages.
    type Checked = (Vec<(usize, usize, Option<Parity>)>, Vec<String>);

    fn check(tokens: proc_macro2::TokenStream) -> Checked {
        let (spec, error) = validate(parse_spec(tokens));
        let entries = spec
            .entries
            .iter()
            .map(|e| (e.l, e.channels, e.parity))
            .collect();
        let messages =
            error.map_or_else(Vec::new, |e| e.into_iter().map(|e| e.to_string()).collect());
        (entries, messages)
    }

    #[test]
    fn valid_lists_parse_in_every_form() {
        let plain = check(quote!(0:32, 1:8,));
        assert_eq!(plain, (vec![(0, 32, None), (1, 8, None)], vec![]));
        let spaced = check(quote!(0 e:8, 1 o:4));
        let glued = check(quote!(0 e:8, 1o:4));
        let string = check(quote!("0e:8, 1o:4"));
        let expected = vec![(0, 8, Some(Parity::Even)), (1, 4, Some(Parity::Odd))];
        assert_eq!(spaced, (expected.clone(), vec![]));
        assert_eq!(glued, (expected.clone(), vec![]));
        assert_eq!(string, (expected, vec![]));
    }

    #[test]
    fn every_problem_is_collected_and_the_rest_kept() {
        let (entries, messages) = check(quote!(2:4, 1:0, 2:1, 12:3, 3 x:1, 4:));
        assert_eq!(messages.len(), 6, "{messages:?}");
        assert!(messages
            .iter()
            .any(|m| m.contains("expected a channel count")));
        assert!(messages.iter().any(|m| m.contains("degree 3 has a parity")));
        assert!(messages.iter().any(|m| m.contains("0 channels")));
        assert!(messages.iter().any(|m| m.contains("listed twice")));
        assert!(messages
            .iter()
            .any(|m| m.contains("above the supported maximum 10")));
        assert!(messages.iter().any(|m| m.contains("unknown parity `x`")));
        // The valid entries survive, sorted: degree 2 (first), and 3 (its parity dropped).
        assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn unsorted_and_mixed_parity_and_empty_are_reported() {
        assert!(check(quote!(1:8, 0:32)).1[0].contains("increasing order: 0 comes after 1"));
        assert!(check(quote!(0 e:8, 1:4)).1[0].contains("degree 1 has no parity"));
        assert!(check(quote!(0:8, 1 o:4)).1[0].contains("degree 1 has a parity"));
        assert!(check(quote!()).1[0].contains("at least one degree"));
        assert!(check(quote!("0e:8, bad")).1[0].contains("malformed entry `bad`"));
    }
}
