# Source on the GPU machine (device tool): installs carried wheels from .whl/ and makes the
# package importable from this checkout without pip-installing it. Defines `a4d` = the CLI.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg/animate4d
ln -sfn "$PWD/protocol" /tmp/pkg/animate4d/protocol
ln -sfn "$PWD/backend" /tmp/pkg/animate4d/backend
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -c "import sys; from animate4d.backend.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' > /tmp/bin/a4d
chmod +x /tmp/bin/a4d
export PATH=/tmp/bin:$PATH
