/* Compiler hints the data plane uses, with fallbacks for compilers that lack them. */
#ifndef FLOWPROBE_COMPILER_H
#define FLOWPROBE_COMPILER_H

#if defined(__GNUC__) || defined(__clang__)
#define fp_prefetch(p) __builtin_prefetch(p)
#else
#define fp_prefetch(p) ((void)(p))
#endif

#endif
