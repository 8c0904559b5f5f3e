// attention_softmax.wgsl — the online-softmax step of flash attention, shared by attention.wgsl
// and attention_decode.wgsl (pasted with `#include` after their workgroup arrays `ss` (rows·BK
// scores), `m_sh`, `l_sh`, `a_sh` (per row) and `const BK`). Not a kernel family of its own.
//
// Thread `li` < `rows` takes score row li of the tile: the running max m and sum l are updated
// (l·α + Σ e^(s − m_new), α = e^(m_old − m_new)), the row's scores become probabilities
// e^(s − m_new) (masked scores, ≤ −1e38, give 0), and α is left in a_sh for rescaling O.
fn online_softmax(li: u32, rows: u32) {
    if (li < rows) {
        let m_old = m_sh[li];
        var mx = m_old;
        for (var j = 0u; j < BK; j++) {
            mx = max(mx, ss[li * BK + j]);
        }
        var sum = 0.0;
        for (var j = 0u; j < BK; j++) {
            let s = ss[li * BK + j];
            let pj = select(0.0, exp(s - mx), s > -1.0e38);
            ss[li * BK + j] = pj;
            sum += pj;
        }
        let alpha = exp(m_old - mx);
        a_sh[li] = alpha;
        m_sh[li] = mx;
        l_sh[li] = l_sh[li] * alpha + sum;
    }
}
