"""The ground floor every room uses: storage (local paths and URIs), the process exit of the
command-line tools, and the console/log set-up. Imports nothing from the project."""
