# Sourced after a build (bash): exports OPENBLAS_CORETYPE when OpenBLAS would otherwise fall back
# to its SSE3 kernels on this CPU (OpenBLAS up to 0.3.24 does so on Intel CPUs whose model it does
# not know, as virtual machines often report; `normlab blas` says what it runs). A value already
# set is left alone. $1: the build folder holding the normlab program (default: build).
if [ -z "${OPENBLAS_CORETYPE+set}" ]; then
  normlab_coretype="$("${1:-build}/normlab" blas --coretype 2>/dev/null || true)"
  if [ -n "$normlab_coretype" ]; then
    export OPENBLAS_CORETYPE="$normlab_coretype"
    echo "OpenBLAS fell back to its SSE3 kernels on this CPU; running with OPENBLAS_CORETYPE=$normlab_coretype" >&2
  fi
  unset normlab_coretype
fi
