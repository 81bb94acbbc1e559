"""A stand-in for the peer implementation's ``naive.py`` (same function names and argument order), built
on this project's own ops, so the side-by-side plumbing is tested without the peer's code. The tests
hand its path to the benchmark, as ``--peer`` would."""

from mesanet.ops import SolverSettings, mesa, mesa_step


def naive_mesa_net_CG(q, k, v, g, lamb, beta, chunk_size, max_CG_iteration=30, h_kk_init=None, h_kv_init=None):
    if q.shape[1] % chunk_size:
        raise ValueError("T must be divisible by chunk_size (as in the peer)")
    solver = SolverSettings(max_iter=max_CG_iteration, tol=0.0, preconditioner="none")
    out = mesa(q, k, v, g, beta, lamb, solver=solver, chunk_size=chunk_size, output_final_state=True)
    return out.output, out.final_state[0], out.final_state[1]


def naive_mesa_net_decoding_one_step(q, k, v, g, lamb, beta, prev_h_kk, prev_h_kv, max_CG_iteration=30):
    o, (h_kk, h_kv), _ = mesa_step(q.float(), k.float(), v.float(), g.float(), beta.float(), lamb.float(), (prev_h_kk, prev_h_kv))
    return o, h_kk, h_kv
