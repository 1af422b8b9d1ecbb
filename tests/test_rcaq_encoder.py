"""The RCAQ encoder step op (algorithms.md §5): the reference against a direct loop and a brute
force over every table, every kernel against the reference (error rule on the costs, the same
chosen table), ties, empty prototypes, thread-count determinism, opcheck and torch.compile."""

import itertools

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels.ops._dispatch import KERNELS
from climbq_kernels.ops.rcaq import rcaq_encoder_step
from climbq_kernels.reference.rcaq import decision
from climbq_kernels.reference.rcaq import rcaq_encoder_step as reference_step
from climbq_kernels.testing import assert_error_rule

from .conftest import KERNEL_BACKENDS

BACKENDS = [(name, device) for name, device in KERNEL_BACKENDS if name in KERNELS["rcaq_encoder_step"]]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = [  # (N, d, rates of the other sensors, rate of this sensor, prototypes)
    (0, 2, (3,), 2, 4), (1, 1, (), 3, 1), (7, 2, (2,), 3, 5), (61, 3, (2, 3), 4, 7),
    (257, 5, (3,), 5, 11), (9001, 2, (4,), 6, 13),  # 9001 > 4096: several blocks in the C++ kernel
]


def _problem(n, d, other_rates, rate, protos, gen, dtype=torch.float32, sensor=0):
    """A random encoder-step problem for sensor `sensor` of a quantizer with rates
    other_rates[:sensor] + (rate,) + other_rates[sensor:]."""
    rates = other_rates[:sensor] + (rate,) + other_rates[sensor:]
    m_total = 1
    for r in rates:
        m_total *= r
    stride = 1
    for r in rates[sensor + 1:]:
        stride *= r
    x = torch.randn(n, d, generator=gen).to(dtype)
    codebook = torch.randn(m_total, d, generator=gen).to(dtype)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    w = w / w.norm()
    q = torch.stack([torch.randint(0, r, (n,), generator=gen) for r in rates], 1) if n else torch.zeros(0, len(rates),
                                                                                                          dtype=torch.long)
    strides = [1] * len(rates)
    for i in range(len(rates) - 2, -1, -1):
        strides[i] = strides[i + 1] * rates[i + 1]
    m = (q * torch.tensor(strides)).sum(1)
    base = m - q[:, sensor] * stride
    proto_index = torch.randint(0, protos, (n,), generator=gen)
    lookup = torch.randint(0, rate, (protos,), generator=gen)
    gamma = float(torch.rand((), generator=gen))
    return (x, decision(x, w), codebook, decision(codebook, w), proto_index, base, lookup, stride, rate, gamma)


def _direct(x, labels, codebook, codeword_labels, proto_index, base, lookup, stride, rate, gamma):
    """The definition, point by point and index by index, in Python floats."""
    costs = [[0.0] * rate for _ in range(lookup.shape[0])]
    for n in range(x.shape[0]):
        for q in range(rate):
            m = int(base[n]) + q * stride
            sq = sum((float(a) - float(b)) ** 2 for a, b in zip(x[n].double(), codebook[m].double(), strict=True))
            costs[int(proto_index[n])][q] += (1 - gamma) * sq + gamma * float(labels[n] != codeword_labels[m])
    return torch.tensor(costs, dtype=torch.float64)


@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_reference_matches_the_definition(case, gen):
    args = _problem(*case, gen)
    costs, new = reference_step(*args)
    torch.testing.assert_close(costs, _direct(*args), rtol=1e-12, atol=1e-12)
    occupied = torch.zeros(args[6].shape[0], dtype=torch.bool)
    occupied[args[4]] = True
    assert torch.equal(new[~occupied], args[6][~occupied])  # an empty prototype keeps its entry


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS)
@pytest.mark.parametrize("sensor", [0, 1])
def test_the_step_is_the_best_of_every_table(backend, device, sensor, gen):
    """Brute force over all R^P tables of one sensor: the step's table reaches the least
    objective, and among the optimal tables it takes the lowest index for each prototype."""
    n, rate, protos = 23, 3, 4
    x, labels, codebook, c_labels, proto_index, base, lookup, stride, _, gamma = _problem(
        n, 2, (2,), rate, protos, gen, sensor=sensor)
    codebook[3] = codebook[1]  # duplicate codewords: exact ties among tables
    c_labels[3] = c_labels[1]
    with cq.use_backend(backend):
        _, chosen = rcaq_encoder_step(x, labels, codebook, c_labels, proto_index, base, lookup, stride, rate, gamma)

    def objective(table):
        m = base + table[proto_index] * stride
        sq = ((x.double() - codebook[m].double()) ** 2).sum(1)
        return float(((1 - gamma) * sq + gamma * (labels != c_labels[m]).double()).sum())

    values = {t: objective(torch.tensor(t)) for t in itertools.product(range(rate), repeat=protos)}
    best = min(values.values())
    optimal = torch.tensor([t for t, v in values.items() if v <= best + 1e-9 * max(1.0, best)])
    assert objective(chosen) <= best + 1e-9 * max(1.0, best)
    occupied = torch.zeros(protos, dtype=torch.bool)
    occupied[proto_index] = True
    assert torch.equal(chosen[occupied], optimal.min(0).values[occupied])
    assert torch.equal(chosen[~occupied], lookup[~occupied])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_matches_reference(backend, device, dtype, case, gen):
    args = _problem(*case, gen, dtype=dtype, sensor=len(case[2]) // 2)
    with cq.use_backend(backend):
        costs, chosen = rcaq_encoder_step(*args)
    ref_costs, ref_chosen = reference_step(*args)  # float64 by definition, whatever x's dtype
    # The reference's own error at the kernels' (float64) precision: the same sums in another order.
    perm = torch.randperm(case[0], generator=gen)
    x, labels, codebook, c_labels, proto_index, base = args[:6]
    reordered, _ = reference_step(x[perm], labels[perm], codebook, c_labels, proto_index[perm], base[perm], *args[6:])
    assert costs.dtype == torch.float64 and chosen.dtype == torch.int64
    assert_error_rule(costs, ref_costs, reordered, name="costs")
    assert torch.equal(chosen, ref_chosen)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device, gen):
    x, labels, codebook, c_labels, proto_index, base, lookup, stride, rate, gamma = _problem(40, 3, (3,), 4, 6, gen)
    x_t = x.t().contiguous().t()
    assert not x_t.is_contiguous()
    wide = torch.randn(codebook.shape[0], 6, generator=gen)
    wide[:, ::2] = codebook
    args = (x_t, labels, wide[:, ::2], c_labels, proto_index[::1], base, lookup, stride, rate, gamma)
    with cq.use_backend(backend):
        costs, chosen = rcaq_encoder_step(*args)
    ref_costs, ref_chosen = reference_step(x, labels, codebook, c_labels, proto_index, base, lookup, stride, rate,
                                           gamma)
    torch.testing.assert_close(costs, ref_costs, rtol=1e-12, atol=1e-12)
    assert torch.equal(chosen, ref_chosen)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_result_does_not_depend_on_thread_count(backend, device, gen):
    args = _problem(20011, 2, (5,), 5, 16, gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with cq.use_backend(backend):
                results.append(rcaq_encoder_step(*args))
    finally:
        torch.set_num_threads(threads)
    for costs, chosen in results[1:]:
        assert torch.equal(costs, results[0][0]) and torch.equal(chosen, results[0][1])


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS)
def test_bad_arguments_are_named(backend, device, gen):
    args = list(_problem(9, 2, (2,), 3, 4, gen))
    bad = [
        (9, 1.5, ValueError, "gamma"),
        (9, -0.1, ValueError, "gamma"),
        (8, 0, ValueError, "rate"),
        (4, args[4].int(), TypeError, "proto_index"),
        (4, args[4] + 4, ValueError, "proto_index"),
        (5, args[5] + 100, ValueError, "base_index"),
        (0, torch.full_like(args[0], float("nan")), ValueError, "x"),
        (2, args[2][:, :1], ValueError, "codebook"),
        (1, args[1][:3], ValueError, "labels"),
    ]
    for position, value, error, name in bad:
        call = list(args)
        call[position] = value
        with cq.use_backend(backend), pytest.raises(error, match=name):
            rcaq_encoder_step(*call)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS)
def test_opcheck(backend, device, gen):
    for case in CASES[:4]:
        with cq.use_backend(backend):
            torch.library.opcheck(rcaq_encoder_step, _problem(*case, gen))


def test_torch_compile_fullgraph(gen):
    torch._dynamo.reset()
    args = _problem(50, 2, (3,), 4, 6, gen)

    def step(x, labels, codebook, c_labels, proto_index, base, lookup):
        costs, chosen = rcaq_encoder_step(x, labels, codebook, c_labels, proto_index, base, lookup, *args[7:])
        return costs.sum(), chosen

    eager = step(*args[:7])
    compiled = torch.compile(step, fullgraph=True)(*args[:7])
    torch.testing.assert_close(compiled[0], eager[0])
    assert torch.equal(compiled[1], eager[1])
