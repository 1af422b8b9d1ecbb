"""bench/int4/int4_cuda_sass.py reads an MMA kernel instantiation's template arguments with or
without a count of 16-row tiles a warp, and counts only the one-tile kernels the dispatcher
launches."""

from .conftest import load_bench_script


def _sass():
    return load_bench_script("int4/int4_cuda_sass")


def test_template_arguments_with_a_tile_count():
    sass = _sass()
    assert sass.template_arguments("int4_mma_kernel", "3, 1, 2, true") == (3, True)
    assert sass.template_arguments("int4_mma_registers_kernel", "5, 1") == (5, None)
    assert sass.template_arguments("int4_mma_kernel", "3, 2, 2, false") is None
    assert sass.template_arguments("int4_mma_registers_kernel", "5, 2") is None


def test_template_arguments_without_a_tile_count():
    sass = _sass()
    assert sass.template_arguments("int4_mma_kernel", "4, 2, false") == (4, False)
    assert sass.template_arguments("int4_mma_registers_kernel", "8") == (8, None)


def test_the_kernel_pattern_finds_both_kernels():
    sass = _sass()
    name = "void int4_mma_kernel<c10::BFloat16, 2, 1, 3, true>(MmaArgs<c10::BFloat16>)"
    m = sass.KERNEL.search(name)
    assert (m.group(1), m.group(2), m.group(3)) == ("int4_mma_kernel", "BFloat16", "2, 1, 3, true")
    m = sass.KERNEL.search("void int4_mma_registers_kernel<c10::Half, 7>(MmaArgs<c10::Half>)")
    assert (m.group(1), m.group(2), m.group(3)) == ("int4_mma_registers_kernel", "Half", "7")
