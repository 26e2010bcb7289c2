# C declarations of engine/export/_encode.pyx: what it takes from engine/includes (the shared
# byte-order header, inet_ntop). The encoders are used from Python only: no class or function of
# theirs is declared here for other Cython modules.
from engine.includes.hton cimport load_be, store_be16, store_be32, store_be64
from engine.includes.inet cimport inet_ntop
from engine.includes.mmsg cimport iovec, msghdr, mmsghdr, sendmmsg
