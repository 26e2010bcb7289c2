# C declarations (extern .pxd files) and the tiny headers they name; see each file.
