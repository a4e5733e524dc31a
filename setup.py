"""Package layout (everything else is in pyproject.toml).

``templates/`` and ``static/`` stay at the top of the repository; the wheel carries them
inside the package, as ``sso/templates`` and ``sso/static``, where ``create_app()`` looks
first. A directory mapped elsewhere cannot be added to ``[tool.setuptools.packages.find]``,
and a static list would drift as ``sso/`` gains subpackages or ``templates/`` gains
directories, hence this discovery.
"""

from setuptools import find_namespace_packages, find_packages, setup

MAPPED = {"sso.templates": "templates", "sso.static": "static"}
# Their subdirectories are listed as packages too: setuptools warns about (and will stop
# shipping) an importable directory that `packages` leaves out.
DATA = [
    *MAPPED,
    *(f"{name}.{sub}" for name, root in MAPPED.items() for sub in find_namespace_packages(root)),
]

setup(
    packages=[*find_packages(include=["sso", "sso.*"]), *DATA],
    package_dir=MAPPED,
    package_data={"sso.devupstream": ["*.yaml"], **{name: ["*"] for name in DATA}},
)
