//! Parsing `#[fiber(...)]` arguments into raw entries, keeping the span of every token so
//! that validation can point at the user's degree, parity letter or channel count.
//!
//! Grammar (entries separated by commas):
//! - `l:channels` — an SE(3) degree, such as `0:16` or `1:8`;
//! - `l p:channels` or, where Rust's lexer allows it, `lp:channels` — an E(3) degree with
//!   parity `p` = `e` (even) or `o` (odd): `0 e:8`, `1o:4`. (`0e` cannot be written glued:
//!   the lexer reads it as a float with an empty exponent before any macro sees it.)
//! - a single string literal in `FiberSpec` notation: `"0e:8, 1o:4"` (spans then cover
//!   the whole string).
//!
//! A malformed entry is reported and skipped; the others are still parsed.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{LitInt, LitStr, Token};

/// A parity as written: a letter and where it was written.
#[derive(Debug, Clone)]
pub struct RawParity {
    pub letter: String,
    pub span: Span,
}

/// One `l[p]:channels` entry with the spans of its parts.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub l: u64,
    pub l_span: Span,
    pub parity: Option<RawParity>,
    pub channels: u64,
    pub channels_span: Span,
}

/// The parsed arguments: the entries that parsed, the errors of those that did not, and
/// the span of the whole argument list (for errors about the list as a whole).
pub struct RawSpec {
    pub entries: Vec<RawEntry>,
    pub errors: Vec<syn::Error>,
    pub span: Span,
}

/// Parses the attribute arguments.
pub fn parse_spec(args: TokenStream) -> RawSpec {
    let span = args.span();
    let mut trees = args.clone().into_iter();
    if let (Some(TokenTree::Literal(_)), None) = (trees.next(), trees.next()) {
        if let Ok(lit) = syn::parse2::<LitStr>(args.clone()) {
            return parse_string(&lit);
        }
    }
    let mut spec = RawSpec {
        entries: Vec::new(),
        errors: Vec::new(),
        span,
    };
    for chunk in split_commas(args) {
        match entry_parser.parse2(chunk) {
            Ok(e) => spec.entries.push(e),
            Err(e) => spec.errors.push(e),
        }
    }
    spec
}

/// Splits a token stream at top-level commas, dropping empty pieces (a trailing comma).
fn split_commas(tokens: TokenStream) -> Vec<TokenStream> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for t in tokens {
        match &t {
            TokenTree::Punct(p) if p.as_char() == ',' => {
                out.push(current.drain(..).collect::<TokenStream>());
            }
            _ => current.push(t),
        }
    }
    if !current.is_empty() {
        out.push(current.into_iter().collect());
    }
    out.retain(|c| !c.is_empty());
    out
}

fn entry_parser(input: ParseStream) -> syn::Result<RawEntry> {
    let degree: LitInt = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "expected a degree entry `l:channels` (such as `1:8`), or `l e:channels` / `1o:4` for E(3)",
        )
    })?;
    let l: u64 = degree.base10_parse()?;
    let mut parity = match degree.suffix() {
        "" => None,
        s => Some(RawParity {
            letter: s.to_string(),
            span: degree.span(),
        }),
    };
    if input.peek(syn::Ident) {
        let letter: syn::Ident = input.parse()?;
        if parity.is_some() {
            return Err(syn::Error::new(letter.span(), "parity given twice"));
        }
        parity = Some(RawParity {
            letter: letter.to_string(),
            span: letter.span(),
        });
    }
    input.parse::<Token![:]>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected `:` and a channel count after degree {l}, as in `{l}:8`"),
        )
    })?;
    let channels: LitInt = input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), "expected a channel count (1, 2, ...) after `:`"))?;
    if !channels.suffix().is_empty() {
        return Err(syn::Error::new(
            channels.span(),
            "a channel count is a plain integer, without suffix",
        ));
    }
    let count: u64 = channels.base10_parse()?;
    if !input.is_empty() {
        return Err(
            input.error("unexpected tokens after the channel count; separate entries with `,`")
        );
    }
    Ok(RawEntry {
        l,
        l_span: degree.span(),
        parity,
        channels: count,
        channels_span: channels.span(),
    })
}

/// Parses `"0e:8, 1o:4"`; every span is the string literal's.
fn parse_string(lit: &LitStr) -> RawSpec {
    let span = lit.span();
    let mut spec = RawSpec {
        entries: Vec::new(),
        errors: Vec::new(),
        span,
    };
    let value = lit.value();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match parse_string_entry(entry, span) {
            Ok(e) => spec.entries.push(e),
            Err(e) => spec.errors.push(e),
        }
    }
    spec
}

fn parse_string_entry(entry: &str, span: Span) -> syn::Result<RawEntry> {
    let malformed = || {
        syn::Error::new(
            span,
            format!(
                "malformed entry `{entry}`: expected `l:channels` or `lp:channels`, such as `1o:8`"
            ),
        )
    };
    let (head, channels) = entry.split_once(':').ok_or_else(malformed)?;
    let head = head.trim();
    let end = head
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(head.len());
    let (digits, letters) = head.split_at(end);
    let l: u64 = digits.parse().map_err(|_| malformed())?;
    let letters = letters.trim();
    let parity = (!letters.is_empty()).then(|| RawParity {
        letter: letters.to_string(),
        span,
    });
    let channels: u64 = channels.trim().parse().map_err(|_| malformed())?;
    Ok(RawEntry {
        l,
        l_span: span,
        parity,
        channels,
        channels_span: span,
    })
}
