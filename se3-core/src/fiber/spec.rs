//! The run-time description of a fiber: which degrees, how many channels each, and the
//! parity of each degree for E(3) fibers. Prints and parses as `0:32, 1:8` (SE(3)) or
//! `0e:8, 1o:4` (E(3)), the notation of e3nn's irreps strings with `channels` after the
//! colon instead of a multiplicity before it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::degree::MAX_DEGREE;
use crate::Error;

pub use crate::so3::Parity;

/// One degree of a fiber: degree `l`, `channels` copies of the (2l+1)-dimensional irrep,
/// and its parity (`None` in SE(3) fibers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DegreeSpec {
    /// The degree l.
    pub l: usize,
    /// The number of channels (copies of the irrep), at least 1.
    pub channels: usize,
    /// The parity under inversion, `None` for SE(3) fibers.
    pub parity: Option<Parity>,
}

impl DegreeSpec {
    /// A degree entry; not validated (see [`FiberSpec::new`]).
    pub const fn new(l: usize, channels: usize, parity: Option<Parity>) -> Self {
        DegreeSpec {
            l,
            channels,
            parity,
        }
    }

    /// The width 2l + 1 of the m axis.
    pub const fn width(&self) -> usize {
        2 * self.l + 1
    }

    /// The number of floats per node: channels * (2l + 1).
    pub const fn dim(&self) -> usize {
        self.channels * self.width()
    }
}

impl fmt::Display for DegreeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parity {
            Some(p) => write!(f, "{}{}:{}", self.l, p.letter(), self.channels),
            None => write!(f, "{}:{}", self.l, self.channels),
        }
    }
}

/// A fixed-capacity table of a fiber's degrees, usable in `const` items so that generic
/// fibers (such as a concatenation) can compute theirs at compile time.
///
/// Holds at most `MAX_DEGREE + 1` entries, sorted by degree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DegreeTable {
    len: usize,
    entries: [DegreeSpec; MAX_DEGREE + 1],
}

impl DegreeTable {
    /// A table holding `degrees` in order.
    ///
    /// Evaluated at compile time by `#[fiber]`; more than `MAX_DEGREE + 1` entries is a
    /// broken invariant of the macro and panics (a compile error in const context).
    pub const fn new(degrees: &[DegreeSpec]) -> Self {
        assert!(
            degrees.len() <= MAX_DEGREE + 1,
            "a fiber has at most MAX_DEGREE + 1 degrees"
        );
        let mut entries = [DegreeSpec::new(0, 0, None); MAX_DEGREE + 1];
        let mut i = 0;
        while i < degrees.len() {
            entries[i] = degrees[i];
            i += 1;
        }
        DegreeTable {
            len: degrees.len(),
            entries,
        }
    }

    /// The table of the channel-wise concatenation of two fibers with the same degrees:
    /// channels add up degree by degree.
    pub const fn concat(a: DegreeTable, b: DegreeTable) -> Self {
        let mut out = a;
        let mut i = 0;
        while i < a.len {
            out.entries[i].channels = a.entries[i].channels + b.entries[i].channels;
            i += 1;
        }
        out
    }

    /// The number of degrees.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no degree (never the case for a declared fiber).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The degrees in increasing order.
    pub fn as_slice(&self) -> &[DegreeSpec] {
        &self.entries[..self.len]
    }

    /// The total dimension per node: sum over degrees of channels * (2l + 1).
    pub const fn dim(&self) -> usize {
        let mut d = 0;
        let mut i = 0;
        while i < self.len {
            d += self.entries[i].dim();
            i += 1;
        }
        d
    }

    /// The number of channels of degree `l`, or `None` if the fiber lacks it.
    pub const fn channels(&self, l: usize) -> Option<usize> {
        let mut i = 0;
        while i < self.len {
            if self.entries[i].l == l {
                return Some(self.entries[i].channels);
            }
            i += 1;
        }
        None
    }

    /// The highest degree (0 for an empty table).
    pub const fn max_degree(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.entries[self.len - 1].l
        }
    }
}

/// A validated run-time fiber description: at least one degree, degrees strictly
/// increasing and at most `MAX_DEGREE`, every channel count at least 1, and either every
/// degree has a parity (E(3)) or none has (SE(3)).
///
/// Prints and parses as `0:32, 1:8` or `0e:8, 1o:4`; serialises as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FiberSpec {
    degrees: Vec<DegreeSpec>,
}

impl FiberSpec {
    /// Validates `degrees` into a spec.
    ///
    /// # Errors
    /// `Empty` if there is no degree, `DegreeTooHigh` above `MAX_DEGREE`, `ZeroChannels`,
    /// `DuplicateDegree`, `UnsortedDegrees` if a degree is lower than the one before, and
    /// `MixedParity` if some degrees carry a parity and others do not.
    pub fn new(degrees: Vec<DegreeSpec>) -> Result<Self, Error> {
        let first = degrees.first().ok_or(Error::Empty { what: "fiber spec" })?;
        let with_parity = first.parity.is_some();
        let mut previous: Option<usize> = None;
        for d in &degrees {
            if d.l > MAX_DEGREE {
                return Err(Error::DegreeTooHigh {
                    l: d.l,
                    max: MAX_DEGREE,
                });
            }
            if d.channels == 0 {
                return Err(Error::ZeroChannels { l: d.l });
            }
            if d.parity.is_some() != with_parity {
                return Err(Error::MixedParity { l: d.l });
            }
            match previous {
                Some(p) if p == d.l => return Err(Error::DuplicateDegree { l: d.l }),
                Some(p) if p > d.l => {
                    return Err(Error::UnsortedDegrees {
                        previous: p,
                        found: d.l,
                    })
                }
                _ => {}
            }
            previous = Some(d.l);
        }
        Ok(FiberSpec { degrees })
    }

    /// The degrees in increasing order.
    pub fn degrees(&self) -> &[DegreeSpec] {
        &self.degrees
    }

    /// The total dimension per node: sum over degrees of channels * (2l + 1).
    pub fn dim(&self) -> usize {
        self.degrees.iter().map(DegreeSpec::dim).sum()
    }

    /// Whether the degrees carry parities (an E(3) fiber).
    pub fn has_parity(&self) -> bool {
        self.degrees.iter().any(|d| d.parity.is_some())
    }

    /// The number of channels of degree `l`, or `None` if the fiber lacks it.
    pub fn channels(&self, l: usize) -> Option<usize> {
        self.degrees.iter().find(|d| d.l == l).map(|d| d.channels)
    }
}

impl fmt::Display for FiberSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.degrees.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses one entry `l:channels` or `l<p>:channels`.
fn parse_entry(input: &str, entry: &str) -> Result<DegreeSpec, Error> {
    let syntax = |expected: &'static str| Error::FiberSyntax {
        input: input.to_string(),
        entry: entry.to_string(),
        expected,
    };
    let (head, channels) = entry
        .split_once(':')
        .ok_or_else(|| syntax("`l:channels`, such as `1:8` or `1o:8`"))?;
    let head = head.trim();
    let digits_end = head
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(head.len());
    let (digits, letters) = head.split_at(digits_end);
    let l: usize = digits
        .parse()
        .map_err(|_| syntax("a degree (0, 1, 2, ...) before `:`"))?;
    let parity = match letters.trim() {
        "" => None,
        "e" => Some(Parity::Even),
        "o" => Some(Parity::Odd),
        other => {
            return Err(Error::UnknownParity {
                found: other.to_string(),
            })
        }
    };
    let channels: usize = channels
        .trim()
        .parse()
        .map_err(|_| syntax("a channel count (1, 2, ...) after `:`"))?;
    Ok(DegreeSpec::new(l, channels, parity))
}

impl FromStr for FiberSpec {
    type Err = Error;

    /// Parses `0:32, 1:8` or `0e:8, 1o:4` (spaces optional).
    ///
    /// # Errors
    /// `FiberSyntax` for an entry that is not `l:channels` / `lp:channels`,
    /// `UnknownParity` for a letter other than `e`/`o`, and every error of [`FiberSpec::new`].
    fn from_str(s: &str) -> Result<Self, Error> {
        let degrees = s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| parse_entry(s, e))
            .collect::<Result<Vec<_>, _>>()?;
        FiberSpec::new(degrees)
    }
}

impl TryFrom<String> for FiberSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<FiberSpec> for String {
    fn from(s: FiberSpec) -> String {
        s.to_string()
    }
}

impl From<DegreeTable> for FiberSpec {
    /// The spec of a declared fiber (already validated by `#[fiber]`).
    fn from(t: DegreeTable) -> FiberSpec {
        FiberSpec {
            degrees: t.as_slice().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_its_display() -> Result<(), Error> {
        for text in ["0:32, 1:8", "0e:8, 1o:4", "0:1, 2:3, 10:1", "1e:2"] {
            let spec: FiberSpec = text.parse()?;
            assert_eq!(spec.to_string(), text);
            let again: FiberSpec = spec.to_string().parse()?;
            assert_eq!(again, spec);
        }
        Ok(())
    }

    #[test]
    fn spec_parses_without_spaces_and_counts_dimension() -> Result<(), Error> {
        let spec: FiberSpec = "0:32,1:8,2:4".parse()?;
        assert_eq!(spec.dim(), 32 + 8 * 3 + 4 * 5);
        assert_eq!(spec.channels(1), Some(8));
        assert_eq!(spec.channels(3), None);
        assert!(!spec.has_parity());
        Ok(())
    }

    #[test]
    fn spec_rejects_each_malformed_input_with_its_variant() {
        let bad = |s: &str| s.parse::<FiberSpec>().err();
        assert!(matches!(
            bad("0:8, 0:4"),
            Some(Error::DuplicateDegree { l: 0 })
        ));
        assert!(matches!(bad("0:0"), Some(Error::ZeroChannels { l: 0 })));
        assert!(matches!(
            bad("11:1"),
            Some(Error::DegreeTooHigh { l: 11, max: 10 })
        ));
        assert!(matches!(bad("0x:1"), Some(Error::UnknownParity { .. })));
        assert!(matches!(
            bad("2:1, 1:1"),
            Some(Error::UnsortedDegrees {
                previous: 2,
                found: 1
            })
        ));
        assert!(matches!(
            bad("0e:1, 1:1"),
            Some(Error::MixedParity { l: 1 })
        ));
        assert!(matches!(bad(""), Some(Error::Empty { .. })));
        assert!(matches!(bad("0-8"), Some(Error::FiberSyntax { .. })));
        assert!(matches!(bad("a:8"), Some(Error::FiberSyntax { .. })));
        assert!(matches!(bad("0:many"), Some(Error::FiberSyntax { .. })));
    }

    #[test]
    fn spec_serialises_as_its_string() -> Result<(), Box<dyn std::error::Error>> {
        let spec: FiberSpec = "0e:8, 1o:4".parse()?;
        let json = serde_json::to_string(&spec)?;
        assert_eq!(json, "\"0e:8, 1o:4\"");
        let back: FiberSpec = serde_json::from_str(&json)?;
        assert_eq!(back, spec);
        assert!(serde_json::from_str::<FiberSpec>("\"0:0\"").is_err());
        Ok(())
    }

    #[test]
    fn table_concat_adds_channels_per_degree() -> Result<(), Error> {
        let a = DegreeTable::new(&[DegreeSpec::new(0, 3, None), DegreeSpec::new(1, 2, None)]);
        let b = DegreeTable::new(&[DegreeSpec::new(0, 5, None), DegreeSpec::new(1, 1, None)]);
        let c = DegreeTable::concat(a, b);
        assert_eq!(FiberSpec::from(c), "0:8, 1:3".parse()?);
        assert_eq!(c.dim(), 8 + 9);
        assert_eq!(c.max_degree(), 1);
        Ok(())
    }

    #[test]
    fn parity_product_follows_sign_multiplication() {
        use Parity::*;
        assert_eq!(Even.product(Even), Even);
        assert_eq!(Odd.product(Odd), Even);
        assert_eq!(Even.product(Odd), Odd);
        assert_eq!(Odd.product(Even), Odd);
    }
}
