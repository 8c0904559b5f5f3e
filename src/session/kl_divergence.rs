//! KL divergence of a run's next-token distributions from a reference's (a logits file), and
//! the statistics `llama-perplexity --kl-divergence` prints: mean KLD with its uncertainty, its
//! median, 99th percentile and maximum, the perplexities of both and their difference (with
//! the covariance of the two runs' NLLs in its error), and how often both put the same token
//! first. Uncertainties are llama.cpp's: `sqrt(var / (n − 1))`, 0 below 11 tokens.

#![warn(missing_docs)]

use serde::Serialize;

use super::logits_file::{logprob, rest_logprob, Record};
use super::perplexity::Scored;

/// Running sums of a comparison.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    nll: Sums,
    nll_base: Sums,
    nll_nll_base: f64,
    kld: Sums,
    klds: Vec<f64>,
    same_top: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl Sums {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
        self.count += 1;
    }

    /// (mean, its uncertainty), as llama.cpp's `mean_and_uncertainty`.
    fn mean_unc(&self) -> (f64, f64) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let n = self.count as f64;
        let m = self.sum / n;
        let var = self.sum2 / n - m * m;
        let unc = if var > 0.0 && self.count > 10 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        (m, unc)
    }
}

/// The comparison's figures.
#[derive(Clone, Debug, Serialize)]
pub struct KldSummary {
    /// Tokens compared.
    pub tokens: usize,
    /// Mean KL divergence (nats), reference ‖ this run.
    pub mean_kld: f64,
    /// Its uncertainty.
    pub mean_kld_stderr: f64,
    /// Median KLD.
    pub median_kld: f64,
    /// 99th percentile KLD (linear interpolation, as llama.cpp).
    pub p99_kld: f64,
    /// Maximum KLD.
    pub max_kld: f64,
    /// This run's perplexity.
    pub ppl: f64,
    /// The reference's perplexity, from its stored log-probabilities.
    pub ppl_base: f64,
    /// `ppl − ppl_base`.
    pub delta_ppl: f64,
    /// Its uncertainty (the two runs' NLLs are correlated).
    pub delta_ppl_stderr: f64,
    /// Mean `ln(ppl / ppl_base)`.
    pub ln_ppl_ratio: f64,
    /// Its uncertainty.
    pub ln_ppl_ratio_stderr: f64,
    /// Fraction of tokens whose most likely next token is the same in both (0…1).
    pub same_top: f64,
    /// Its uncertainty.
    pub same_top_stderr: f64,
}

impl KldStats {
    /// Compare one scored token with the reference's record for it.
    pub fn add(&mut self, s: &Scored, r: &Record) {
        let nll = s.nll();
        let nll_base = -(r.target as f64);
        self.nll.add(nll);
        self.nll_base.add(nll_base);
        self.nll_nll_base += nll * nll_base;
        let lqs: Vec<f32> = r.entries.iter().map(|&(id, _)| logprob(s, id)).collect();
        let mut kld: f64 = r
            .entries
            .iter()
            .zip(&lqs)
            .map(|(&(_, lp), &lq)| (lp as f64).exp() * (lp as f64 - lq as f64))
            .sum();
        if r.rest > f32::NEG_INFINITY {
            let rest_q = rest_logprob(lqs.iter().copied());
            kld += (r.rest as f64).exp() * (r.rest as f64 - rest_q as f64);
        }
        self.kld.add(kld);
        self.klds.push(kld);
        let top = argmax(s.logits);
        if r.entries.first().map(|e| e.0) == Some(top) {
            self.same_top += 1;
        }
    }

    /// The figures so far.
    pub fn summary(&self) -> KldSummary {
        let n = self.nll.count;
        let (lq, lq_unc) = self.nll.mean_unc();
        let (lb, lb_unc) = self.nll_base.mean_unc();
        let cov = if n < 10 {
            0.0
        } else {
            let nf = n as f64;
            (self.nll_nll_base / nf - (self.nll.sum / nf) * (self.nll_base.sum / nf)) / (nf - 1.0)
        };
        let (ppl, ppl_base) = (lq.exp(), lb.exp());
        let (ppl_unc, base_unc) = (ppl * lq_unc, ppl_base * lb_unc);
        let ppl_cov = ppl * ppl_base * cov;
        let (mean_kld, mean_kld_stderr) = self.kld.mean_unc();
        let mut sorted = self.klds.clone();
        sorted.sort_by(f64::total_cmp);
        let same = self.same_top as f64 / n.max(1) as f64;
        KldSummary {
            tokens: n,
            mean_kld,
            mean_kld_stderr,
            median_kld: percentile(&sorted, 0.5),
            p99_kld: percentile(&sorted, 0.99),
            max_kld: sorted.last().copied().unwrap_or(0.0),
            ppl,
            ppl_base,
            delta_ppl: ppl - ppl_base,
            delta_ppl_stderr: (ppl_unc * ppl_unc + base_unc * base_unc - 2.0 * ppl_cov)
                .max(0.0)
                .sqrt(),
            ln_ppl_ratio: lq - lb,
            ln_ppl_ratio_stderr: (lq_unc * lq_unc + lb_unc * lb_unc - 2.0 * cov)
                .max(0.0)
                .sqrt(),
            same_top: same,
            same_top_stderr: if n > 1 {
                (same * (1.0 - same) / (n - 1) as f64).sqrt()
            } else {
                0.0
            },
        }
    }
}

/// The first index of the largest value.
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The `fraction` quantile of sorted values, interpolated linearly (llama.cpp's `percentile`;
/// its median is the same as the mean of the two middle values).
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let t = p - i as f64;
    (1.0 - t) * sorted[i] + t * sorted.get(i + 1).copied().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
