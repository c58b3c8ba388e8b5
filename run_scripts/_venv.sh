# Sourced by demo.sh and test.sh: make sure the virtual environment exists and holds this package
# (editable, with the test extras). VENV (default .venv) and PYTHON (default python3) choose it.
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall when the package metadata changed since the last install (or was never installed).
if [ ! -f "$VENV/.lavis-installed" ] || [ setup.py -nt "$VENV/.lavis-installed" ] \
   || [ requirements.txt -nt "$VENV/.lavis-installed" ] || ! "$VENV/bin/python" -c "import lavis" 2>/dev/null; then
  echo "installing the package and its dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$VENV/.lavis-installed"
fi
PY="$VENV/bin/python"
