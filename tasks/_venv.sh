# Shared by the task scripts: create .venv (once) and install pollen into it. The install is
# editable, so code changes need no reinstall: it runs again only when pyproject.toml or the
# extras asked for changed since the last install of those extras that succeeded
# (.venv/.installed-EXTRAS).
ensure_venv() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || {
      echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'" >&2
      exit 1
    }
  fi
  local stamp marker=".venv/.installed-${extras//[^a-z]/}"
  stamp="$(cat pyproject.toml - <<<"${extras}" | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
  if [ -f "${marker}" ] && [ "$(cat "${marker}")" = "${stamp}" ]; then
    return
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  # a .venv from before the distribution was renamed to pollen-jobs: drop the old "pollen"
  .venv/bin/python -m pip uninstall --quiet --yes pollen 2>/dev/null || true
  .venv/bin/python -m pip install --quiet --editable ".${extras}"
  echo "${stamp}" > "${marker}"
}
