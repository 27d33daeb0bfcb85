# Shared by the task scripts: create .venv (once) and install pollen into it.
ensure_venv() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || {
      echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'" >&2
      exit 1
    }
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --editable ".${extras}"
}
