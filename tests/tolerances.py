"""Every numerical tolerance of the test suite, each with its reason. Never loosen one to make a
test pass: find out why the error grew."""

#: float64 chunkwise CG (run well past convergence) against a direct solve. What remains is rounding
#: amplified by cond(H_t + Lambda) <= ~1e3 in the test problems, i.e. ~1e-12; the operator issue
#: requires <= 1e-6 relative error for outputs, states and all gradients.
F64_RTOL = 1e-6

#: Two exact float64 algorithms that share no code path beyond elementary ops (e.g. Sherman-Morrison
#: vs CG, decode loop vs chunk form, packed vs per-sequence): rounding only, far below this.
F64_EXACT_RTOL = 1e-9

#: Homogeneity of the implicit backward (operator issue): scaling the upstream gradient by s scales
#: every input gradient by s. CG has no additive constants, so only rounding differs.
HOMOGENEITY_RTOL = 1e-5

#: float32 solver vs float64 reference at tol=0 and 30+ steps: the fp32 CG residual stalls near
#: eps_32 * cond ~ 1e-7 * 1e3 = 1e-4 on the worst (gamma ~ 1) heads of the test problems.
F32_RTOL = 1e-4

#: bf16 inputs with an fp32 solver, against float64 on the same (bf16-rounded) inputs: the output is
#: rounded to bf16 once (unit roundoff 2^-8 = 3.9e-3); 1e-2 leaves room for that and nothing more.
BF16_RTOL = 1e-2

#: Large-lambda limit: lam * mesa(lam = c) -> GLA output as c -> inf with error O(||H|| / c).
#: At c = 1e6 and ||H|| <= T the error is <= ~1e-4.
LARGE_LAMBDA_RTOL = 1e-3

#: torch.autograd.gradcheck on float64 problems whose CG is run to convergence (finite-difference
#: step 1e-6, so truncation error ~1e-6 relative; gradcheck's own default atol is 1e-5).
GRADCHECK_ATOL = 1e-5
GRADCHECK_RTOL = 1e-4
