//! The `config.json` of a reference model: class, constructor kwargs and forward kwargs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// Where a forward parameter comes from in `inputs.safetensors`: one tensor, or one tensor per degree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TensorName {
    /// A single tensor name.
    One(String),
    /// Degree (as a string, `"0"`) to tensor name.
    PerDegree(BTreeMap<String, String>),
}

/// The `forward_kwargs` object.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ForwardKwargs {
    /// Forward parameter name to tensor name(s) in the inputs file.
    #[serde(default)]
    pub tensors: BTreeMap<String, TensorName>,
    /// Plain values (`return_type`, `return_pooled`).
    #[serde(default)]
    pub literals: serde_json::Value,
}

/// The library that defined the model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Library {
    /// Package name, e.g. `se3-transformer-pytorch`.
    pub name: String,
    /// Package version.
    #[serde(default)]
    pub version: String,
}

/// A model config file as written next to reference checkpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelFile {
    /// Folder name of the reference model, if any.
    #[serde(default)]
    pub name: Option<String>,
    /// Python class (or description) of the model.
    pub class: String,
    /// Library that defined the class.
    pub library: Library,
    /// Exactly the kwargs passed to the constructor.
    pub constructor_kwargs: serde_json::Value,
    /// How the forward pass was called.
    #[serde(default)]
    pub forward_kwargs: ForwardKwargs,
    /// The outputs the reference run produced, by name (`out`, `type0`, ...).
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputSpec>,
}

/// One output of a reference run: its shape and how it transforms under a rotation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OutputSpec {
    /// Shape of the output tensor.
    #[serde(default)]
    pub shape: Vec<usize>,
    /// In words, e.g. `invariant (type 0)` or `degree 1: rotates by D_1(R)`.
    #[serde(default)]
    pub transforms_as: String,
}

impl OutputSpec {
    /// Whether the output is a rotation invariant (degree 0).
    pub fn is_invariant(&self) -> bool {
        self.transforms_as.starts_with("invariant")
    }

    /// Whether the output rotates as a degree-1 feature (`f -> f R^T` on its last axis): the
    /// reference configs say `type 1 ...`, `degree 1 ...` or `... rotates by R`.
    pub fn is_vector(&self) -> bool {
        let t = &self.transforms_as;
        !self.is_invariant()
            && (t.starts_with("type 1") || t.starts_with("degree 1") || t.contains("rotates by R"))
    }
}

impl ModelFile {
    /// Reads and parses a `config.json`.
    ///
    /// # Errors
    /// `Io` if unreadable, `FileTooLarge` past [`crate::limits::MAX_TEXT_FILE_BYTES`], `ConfigParse`
    /// if not a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = crate::limits::read_text_file(path)?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json` (`origin` names it in errors).
    ///
    /// # Errors
    /// `ConfigParse` if the text is not a model file.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, Error> {
        serde_json::from_str(&python_json_to_strict(text)).map_err(|source| Error::ConfigParse {
            path: origin.to_string(),
            source,
        })
    }

    /// Whether the constructor was se3-transformer-pytorch's `SE3Transformer`.
    pub fn is_se3_transformer(&self) -> bool {
        self.class.ends_with("SE3Transformer")
    }

    /// Whether the constructor was VN-transformer's `VNTransformer`.
    pub fn is_vn_transformer(&self) -> bool {
        self.class.ends_with("VNTransformer")
    }

    /// Whether the constructor was equiformer-pytorch's `Equiformer`.
    pub fn is_equiformer(&self) -> bool {
        self.class.ends_with(".Equiformer") || self.class == "Equiformer"
    }

    /// Whether the model is the TFN stack of ConvSE3 + NormSE3.
    pub fn is_tfn_stack(&self) -> bool {
        self.class.starts_with("TFNStack")
    }
}

/// Python's `json.dump` writes `float('inf')` and `float('nan')` as the bare tokens `Infinity`,
/// `-Infinity` and `NaN`, which strict JSON (and serde_json) rejects: a config dumped with
/// `num_neighbors = float('inf')` (the library's default) would not load. Outside string literals
/// those tokens become the strings `"Infinity"`, `"-Infinity"` and `"NaN"`, which the config fields
/// that may be infinite accept.
pub fn python_json_to_strict(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(t) = token {
                out.push('"');
                out.push_str(t);
                out.push('"');
                rest = &rest[t.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Rejects any key of `obj` not in `known` with `UnknownKwarg`.
pub(crate) fn check_known_keys(
    model: &'static str,
    obj: &serde_json::Value,
    known: &[&str],
) -> Result<(), Error> {
    if let Some(map) = obj.as_object() {
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Error::UnknownKwarg {
                model,
                name: k.clone(),
            });
        }
    }
    Ok(())
}

/// Parses a `{"0": 8, "1": 4}` fiber dict into sorted (degree, channels).
pub(crate) fn parse_fiber_dict(
    field: &'static str,
    dict: &BTreeMap<String, usize>,
) -> Result<Vec<(usize, usize)>, Error> {
    let mut out = Vec::with_capacity(dict.len());
    for (k, &c) in dict {
        let l: usize = k.parse().map_err(|_| Error::InvalidConfig {
            field,
            expected: "degree keys that are non-negative integers",
            found: k.clone(),
        })?;
        crate::limits::at_most(field, l, crate::limits::MAX_DEGREE)?;
        crate::limits::at_most(field, c, crate::limits::MAX_CHANNELS)?;
        if c == 0 {
            return Err(Error::InvalidConfig {
                field,
                expected: "a positive channel count per degree",
                found: format!("{l}: 0"),
            });
        }
        out.push((l, c));
    }
    out.sort_unstable();
    if out.is_empty() {
        return Err(Error::InvalidConfig {
            field,
            expected: "at least one degree",
            found: "{}".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::python_json_to_strict;
    use crate::se3_transformer::Se3TransformerConfig;

    #[test]
    fn python_infinities_become_strings_outside_string_literals() {
        let text = r#"{"a": Infinity, "b": -Infinity, "c": NaN, "d": "NaN \" Infinity", "e": 1.5}"#;
        let strict = python_json_to_strict(text);
        assert_eq!(
            strict,
            r#"{"a": "Infinity", "b": "-Infinity", "c": "NaN", "d": "NaN \" Infinity", "e": 1.5}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&strict).is_ok());
    }

    #[test]
    fn infinite_defaults_written_by_python_load_as_the_library_defaults() -> Result<(), crate::Error>
    {
        let text = r#"{"dim": 4, "num_neighbors": Infinity, "valid_radius": Infinity,
            "max_sparse_neighbors": 8.0, "egnn_weights_clamp_value": Infinity, "num_degrees": 2}"#;
        let v: serde_json::Value =
            serde_json::from_str(&python_json_to_strict(text)).map_err(|e| {
                crate::Error::InvalidConfig {
                    field: "test",
                    expected: "json",
                    found: e.to_string(),
                }
            })?;
        let cfg = Se3TransformerConfig::from_kwargs(&v)?;
        assert_eq!(cfg.num_neighbors, None);
        assert_eq!(cfg.max_sparse_neighbors, Some(8));
        assert_eq!(cfg.valid_radius, f64::INFINITY);
        assert_eq!(cfg.egnn_weights_clamp_value, Some(f64::INFINITY));
        // a config with infinities survives a serde round trip
        let back = serde_json::to_value(&cfg).map_err(|e| crate::Error::InvalidConfig {
            field: "test",
            expected: "serialisable",
            found: e.to_string(),
        })?;
        assert_eq!(Se3TransformerConfig::from_kwargs(&back)?, cfg);
        // a negative or fractional count is a typed parse error
        for bad in [
            r#"{"dim": 4, "num_degrees": 1, "num_neighbors": -1}"#,
            r#"{"dim": 4, "num_degrees": 1, "num_neighbors": 2.5}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(bad).unwrap_or_default();
            assert!(matches!(
                Se3TransformerConfig::from_kwargs(&v),
                Err(crate::Error::ConfigParse { .. })
            ));
        }
        Ok(())
    }
}
