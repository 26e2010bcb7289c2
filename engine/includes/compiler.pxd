# Compiler hints (compiler.h).

cdef extern from "compiler.h" nogil:
    void prefetch "fp_prefetch"(const void* p) noexcept
