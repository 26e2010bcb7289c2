# Address text (POSIX <arpa/inet.h>).

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, int size)
