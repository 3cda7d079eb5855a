//! Rotary position / distance embeddings of se3-transformer-pytorch (`rotary.py`).

/// Rotary embeddings of degree-0 queries, keys and values (`rotary_position`, `rotary_rel_dist`).
///
/// Frequencies `t * inv_freq`, each repeated twice (`[f0, f0, f1, f1, ...]`); position part from the
/// node index, distance part from `float32(100 * |r_ij|)` (0 for queries and the self key); applied as
/// `t cos + rotate_half(t) sin` on the first `len(freqs)` channels, where `rotate_half` maps
/// `(t0, t1, t2, t3, ...)` to `(-t1, -t3, ..., t0, t2, ...)` (the library's layout).
#[derive(Debug, Clone)]
pub(crate) struct Rotary {
    pub inv_freq: Vec<f64>,
    pub position: bool,
    pub rel_dist: bool,
}

impl Rotary {
    fn part(&self, t: f64, out: &mut Vec<f64>) {
        for f in &self.inv_freq {
            let v = t * f;
            out.push(v);
            out.push(v);
        }
    }

    pub(crate) fn freqs(&self, pos: usize, dist: f64) -> Vec<f64> {
        let mut out = Vec::new();
        if self.position {
            self.part(f64::from(pos as f32), &mut out);
        }
        if self.rel_dist {
            self.part(f64::from((dist * 100.0) as f32), &mut out);
        }
        out
    }

    pub(crate) fn apply(freqs: &[f64], t: &mut [f64]) {
        let rot = freqs.len().min(t.len());
        let half = rot / 2;
        let orig: Vec<f64> = t[..rot].to_vec();
        for i in 0..rot {
            let rh = if i < half {
                -orig[2 * i + 1]
            } else {
                orig[2 * (i - half)]
            };
            t[i] = orig[i] * freqs[i].cos() + rh * freqs[i].sin();
        }
    }
}
