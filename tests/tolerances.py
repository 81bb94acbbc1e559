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

#: Two float64 paths of a Mesa *layer* that each run CG far past convergence (max_iter = 3 Dk, tol = 0):
#: decode step vs chunk form, padded vs alone, packed vs alone, Cholesky vs CG. Both solves sit at
#: rounding level amplified by cond(H_t + Lambda) (<= ~1e2 for the layer tests' gates at T <= 40, i.e.
#: ~1e-14), then pass the per-head RMSNorm; 1e-9 leaves five orders of margin and still catches any
#: unconverged solve or wrongly handed-over state (those show up at >= 1e-6).
LAYER_CG_F64_RTOL = 1e-9

#: float32 token mixers (attention, Hawk): two paths that differ only in the order of float32
#: operations (decode steps vs the parallel form, SDPA vs an explicit softmax, padded vs alone).
#: Rounding of O(T) terms of unit size is ~sqrt(T) * 6e-8 ~ 1e-6 relative at the test sizes.
F32_LAYER_RTOL = 1e-5

#: A whole mixer in bf16 (parameters and activations; states and solves in fp32) against the same bf16
#: weights and inputs in float64. About six bf16 roundings in series (q/k/v projection outputs, the
#: short convolution, the per-head norm output, the output projection), each up to 2^-8 relative, are
#: compounded by the L2 and RMS normalisations: measured 0.6e-2 to 1.3e-2 over seeds and mixers.
LAYER_BF16_RTOL = 3e-2

#: Training loss traces of the same global batches split differently (gradient accumulation micro-batches,
#: DDP ranks): identical math, different float32 summation order of the loss mean, the gradient sums
#: (backward per micro-batch, gloo all-reduce) and, across processes, of the matmul blocking (threads).
#: Each reduction differs by ~1e-7 relative; measured <= 2e-7 over 5 AdamW steps of the tiny model. Adam's
#: normalised update can amplify a rounding difference on a near-zero gradient, so 1e-5 leaves room for
#: that over a few steps while any real error (a lost or double-counted micro-batch, a wrong 1/accum or
#: 1/world_size scale, another data order) shows up at >= 1e-3.
TRAIN_SPLIT_RTOL = 1e-5

#: Training loss of a bf16-autocast run against the same run in fp32 over the first steps (tiny model): the
#: autocast matmuls round to bf16 (unit roundoff 2^-8 = 3.9e-3 per operand) but the loss is a mean over
#: hundreds of tokens of fp32 soft-capped logits, and the Mesa solver runs in fp32 regardless. Measured
#: 7e-5 at step 1 and <= 3e-4 by step 5; 2e-3 still fails for a wrong model or a bf16 master copy.
TRAIN_BF16_LOSS_RTOL = 2e-3
