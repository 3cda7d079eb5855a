//! Which elements of one graph constant hold which parameter elements, as strided runs.
//!
//! A graph constant (a "feed") is cut from parameters: a copy of a weight, a transposed weight,
//! several weights side by side, and elements that are constants of the layer (biases fixed at
//! zero, padding). Run `r` says `feed[r.at + k] = param[r.param][r.start + k * r.stride]` for
//! `k < r.len`; elements in no run are constants. A copied weight is one run of stride 1 and a
//! transposed `[rows, cols]` weight `cols` runs of stride `cols`, so the map costs a few bytes a
//! run instead of 12 bytes an element (the per-element form held more memory than the weights
//! themselves in a training step).

/// One strided run of a feed (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// First feed element.
    at: usize,
    /// Elements in the run (at least 1).
    len: usize,
    /// Parameter index.
    param: u32,
    /// Parameter element of the first feed element.
    start: usize,
    /// Parameter elements between consecutive feed elements (0 for a repeated element).
    stride: isize,
}

impl Run {
    /// The parameter element of feed element `at + k`.
    fn element(&self, k: usize) -> usize {
        (self.start as isize + k as isize * self.stride) as usize
    }
}

/// The runs of one feed (module doc), built element by element with [`ParamRuns::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParamRuns {
    runs: Vec<Run>,
}

impl ParamRuns {
    /// Records that feed element `at` holds element `element` of parameter `param`. Elements are
    /// pushed in increasing `at`; an element that continues the last run (same parameter, next
    /// feed element, the run's stride) extends it.
    pub(crate) fn push(&mut self, at: usize, param: u32, element: usize) {
        if let Some(last) = self.runs.last_mut() {
            if last.param == param && last.at + last.len == at {
                let step = element as isize - last.start as isize;
                if last.len == 1 {
                    last.stride = step;
                    last.len = 2;
                    return;
                }
                if step == last.len as isize * last.stride {
                    last.len += 1;
                    return;
                }
            }
        }
        self.runs.push(Run {
            at,
            len: 1,
            param,
            start: element,
            stride: 1,
        });
    }

    /// Whether no element of the feed holds a parameter.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The parameters this feed reads, sorted, each once.
    pub(crate) fn params(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.runs.iter().map(|r| r.param).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Writes the parameter elements into `feed` (`value(param, element)` gives each); the
    /// constants stay as they are.
    pub(crate) fn write(&self, feed: &mut [f32], value: impl Fn(usize, usize) -> f32) {
        for r in &self.runs {
            let p = r.param as usize;
            for (k, v) in feed[r.at..r.at + r.len].iter_mut().enumerate() {
                *v = value(p, r.element(k));
            }
        }
    }

    /// Adds the gradient of the feed (`grad`, one value per feed element) to the parameters'
    /// gradients: `grads[param][element] += grad[at]` for every element that holds one.
    pub(crate) fn accumulate(&self, grad: &[f32], grads: &mut [Vec<f64>]) {
        for r in &self.runs {
            let g = &mut grads[r.param as usize];
            for (k, &v) in grad[r.at..r.at + r.len].iter().enumerate() {
                g[r.element(k)] += f64::from(v);
            }
        }
    }

    /// The number of runs (for tests and memory figures).
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A random feed: pieces that copy, transpose or repeat parameter elements, between
    /// constants; the runs must give back every element's source.
    #[test]
    fn runs_reproduce_a_random_element_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let params: Vec<Vec<f64>> = (0..4)
            .map(|_| (0..60).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect();
        let mut sources: Vec<Option<(u32, usize)>> = Vec::new();
        for _ in 0..12 {
            let p = rng.gen_range(0..4u32);
            match rng.gen_range(0..4) {
                0 => {
                    let s = rng.gen_range(0..30);
                    sources.extend((s..s + rng.gen_range(1..30)).map(|e| Some((p, e))));
                }
                1 => {
                    let (rows, cols) = (rng.gen_range(1..6), rng.gen_range(1..10));
                    for c in 0..cols {
                        sources.extend((0..rows).map(|r| Some((p, r * cols + c))));
                    }
                }
                2 => {
                    let e = rng.gen_range(0..60);
                    sources.extend((0..rng.gen_range(1..5)).map(|_| Some((p, e))));
                }
                _ => sources.extend((0..rng.gen_range(1..4)).map(|_| None)),
            }
        }
        let mut runs = ParamRuns::default();
        for (at, s) in sources.iter().enumerate() {
            if let Some((p, e)) = *s {
                runs.push(at, p, e);
            }
        }
        let mut feed = vec![7.0f32; sources.len()];
        runs.write(&mut feed, |p, e| params[p][e] as f32);
        for (at, s) in sources.iter().enumerate() {
            let want = s.map_or(7.0, |(p, e)| params[p as usize][e] as f32);
            assert_eq!(feed[at], want, "feed element {at}");
        }
        let grad: Vec<f32> = (0..sources.len())
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let mut got = vec![vec![0.0f64; 60]; 4];
        runs.accumulate(&grad, &mut got);
        let mut want = vec![vec![0.0f64; 60]; 4];
        for (at, s) in sources.iter().enumerate() {
            if let Some((p, e)) = *s {
                want[p as usize][e] += f64::from(grad[at]);
            }
        }
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{g} vs {w}");
        }
        assert!(runs.runs() <= sources.len());
    }

    #[test]
    fn a_transposed_weight_is_one_run_per_column() {
        let (rows, cols) = (128usize, 16usize);
        let mut runs = ParamRuns::default();
        for c in 0..cols {
            for r in 0..rows {
                runs.push(c * rows + r, 3, r * cols + c);
            }
        }
        assert_eq!(runs.runs(), cols);
        assert_eq!(runs.params(), vec![3]);
    }
}
