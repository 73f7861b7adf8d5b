import re

from setuptools import Extension, find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', open("wmproxy/__init__.py").read()).group(1)

setup(
    name="wmproxy",
    version=version,
    description="Proxy suite on gevent: forward proxy (HTTP, CONNECT, SOCKS5, SOCKS4/4a), tunnels, reverse proxy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",  # as the Rust wmproxy's
    license_files=["LICENSE"],
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Topic :: Internet :: Proxy Servers",
        "Environment :: No Input/Output (Daemon)",
    ],
    python_requires=">=3.11",
    packages=find_packages(include=["wmproxy", "wmproxy.*"]),
    scripts=["bin/wmproxy-server", "bin/wmproxy-client"],
    # C versions of hot pure-Python functions (wmproxy/prot/_speedups.c); optional: where no C
    # compiler or Python headers are found, wmproxy installs and runs on the Python ones.
    ext_modules=[Extension("wmproxy.prot._speedups", ["wmproxy/prot/_speedups.c"], optional=True)],
    install_requires=[
        "gevent>=24.2",
        "dnspython>=2.4",
        "configargparse>=1.7",
        "psutil>=5.9",
        "httptools>=0.6",
        "wsproto>=1.2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "trustme>=1.1",
            "PySocks>=1.7",
            "requests>=2.31",
            "hypothesis>=6.100",
            "prometheus_client>=0.17",
            "websockets>=13",
        ],
    },
)
