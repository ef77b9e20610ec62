"""The docs say what the code does: every command, path, module, link and make target in README.md
and docs/*.md is checked against the repository, without running any pipeline (a few seconds).

What is checked, per Markdown file (fenced ``` / ```bash / ```sh blocks, and inline `code`):
  - a command line of one of our CLIs (`python local_runner.py`, `python -m preprocessing.convert`,
    `.venv/bin/python predict.py`, `UNET3P_X=1 python ...`, `\\` continuations joined, bench/
    scripts too) uses only flags that CLI's argparse parser defines, each with the values it
    takes. The parser is captured, not run: argparse's parse_args is patched to hand it over.
    Our CLIs call parse_args, so an unknown flag is an error there too; Beam options travel only
    as values of --beam_arg (`--beam_arg=--runner=...`), and those must be options Beam knows. A
    CLI that calls parse_known_args passes its rest somewhere: PASSES_UNKNOWN says where, and the
    rest is checked against that parser.
  - `python -m X`: the module exists (a package needs __main__.py).
  - repo-relative paths (`trainer/run.py`, `docs/deploy.md`, `bench/*.py`, bare `predict.py`) and
    dotted names of ours (`components.task_entrypoint`, `evaluation.report.write_report`, imports
    in ```python blocks) exist.
  - links `[text](docs/x.md#anchor)` resolve to a file (and a heading).
  - `make X` targets exist in the Makefile; `make run ARGS="..."` flags are local_runner's.
  - every UNET3P_* variable named exists in the code, and docs/settings.md lists them all.
And: README.md is at most 10,240 bytes and links every page under docs/.
The checker's own tests feed it small broken Markdown strings and expect each fault reported.
"""
from __future__ import annotations

import argparse
import ast
import glob
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple
from unittest import mock

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
README_MAX_BYTES = 10_240

# Python packages of this project (a dotted name or `python -m` target starting with one is ours).
PACKAGES = ("pipeline", "components", "trainer", "evaluation", "inference", "preprocessing",
            "models", "schema", "common")
# Top-level folders a repo-relative path may start with.
FOLDERS = PACKAGES + ("tests", "bench", "docs", "scripts", "requirements", ".ci")
FILE_EXTENSIONS = {"py", "md", "pbtxt", "txt", "json", "jsonl", "csv", "sh", "yaml", "yml", "npz",
                   "html", "sqlite", "gz", "nii", "log", "whl", "zip", "cfg", "ini", "toml"}

# How each CLI's parser is reached: (module, function that builds the parser and parses).
CLIS = {
    "local_runner.py": ("local_runner", "parse_args"),
    "kubeflow_runner.py": ("kubeflow_runner", "parse_args"),
    "predict.py": ("predict", "parse_args"),
    "-m preprocessing.convert": ("preprocessing.convert", "parse_args"),
    "-m evaluation.volume_eval": ("evaluation.volume_eval", "parse_args"),
    "-m evaluation.report": ("evaluation.report.__main__", "parse_args"),
    # preprocessing/synthetic_ct/__main__.py calls cli.main(), which parses.
    "-m preprocessing.synthetic_ct": ("preprocessing.synthetic_ct.cli", "main"),
    "-m pipeline.settings_reference": ("pipeline.settings_reference", "parse_args"),
    "-m preprocessing.lits_crop": ("preprocessing.lits_crop", "parse_args"),
}
# Modules of ours run with `python -m` that take positional arguments only (no argparse).
POSITIONAL_ONLY = {
    "-m trainer.run",                   # one argument: the fn_args JSON (trainer/run.py main)
    "-m components.task_entrypoint",    # MODULE ARGS...: TFX's entrypoint and its own args
}
# CLIs that call parse_known_args, and where their unknown arguments go (read from their code):
# bench/pipeline_demo.py hands the rest to local_runner.main.
PASSES_UNKNOWN = {"bench/pipeline_demo.py": "local_runner.py"}
# The flags whose values are Beam pipeline options.
BEAM_ARG_DESTS = {"beam_arg"}


class Problem(NamedTuple):
    doc: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Markdown: fenced blocks and inline code


class Block(NamedTuple):
    lang: str
    line: int            # line number of the block's first content line
    lines: List[str]


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


def split_markdown(text: str) -> Tuple[List[Block], str]:
    """The fenced blocks, and the text outside them (fenced lines blanked, so that line numbers
    and offsets still match the file)."""
    blocks, prose, current = [], [], None
    for number, line in enumerate(text.split("\n"), start=1):
        match = _FENCE.match(line)
        if current is None and match:
            indent, fence, lang = match.groups()
            current = (fence, len(indent), lang.lower(), number + 1, [])
            prose.append("")
        elif current is not None and line.strip().startswith(current[0][:3]) and \
                line.strip().strip(current[0][0]) == "":
            blocks.append(Block(current[2], current[3], current[4]))
            current = None
            prose.append("")
        elif current is not None:
            indent = current[1]
            current[4].append(line[indent:] if line[:indent].strip() == "" else line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def inline_code(prose: str) -> Iterator[Tuple[int, str]]:
    """(line, text) of each inline code span; a span may wrap onto the next line."""
    for match in _INLINE.finditer(prose):
        if "\n\n" not in match.group(1):
            yield prose.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())


def shell_commands(block: Block) -> Iterator[Tuple[int, str]]:
    """(line, command) of a shell block, `\\` continuations joined."""
    pending, start = "", None
    for offset, line in enumerate(block.lines):
        if start is None:
            start = block.line + offset
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending, start = "", None
    if pending:
        yield start, pending


# ---------------------------------------------------------------------------------------------
# Shell words -> commands


_PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = {"&&", "||", ";", "|"}


def words(command: str) -> List[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:          # an unbalanced quote in prose: plain words up to a comment
        return command.split(" #")[0].split()


def segments(tokens: List[str]) -> Iterator[List[str]]:
    """A command line cut at shell operators; a `|` inside [...] or (...) is an alternative."""
    current, depth = [], 0
    for token in tokens:
        if token in _OPERATORS and depth <= 0:
            if current:
                yield current
            current, depth = [], 0
            continue
        depth += token.count("[") + token.count("(") - token.count("]") - token.count(")")
        current.append(token)
    if current:
        yield current


class Invocation(NamedTuple):
    program: str         # a CLIS key, "bench/x.py", "-m module", "make", or ""
    args: List[str]


def invocation(tokens: List[str]) -> Optional[Invocation]:
    tokens = list(tokens)
    while tokens and (_ASSIGNMENT.match(tokens[0]) or tokens[0] == "time"):
        tokens.pop(0)
    if not tokens:
        return None
    if tokens[0] == "make":
        return Invocation("make", tokens[1:])
    if not _PYTHON.match(tokens[0]) or len(tokens) < 2:
        return None
    if tokens[1] == "-m" and len(tokens) > 2:
        return Invocation("-m " + tokens[2], tokens[3:])
    if tokens[1].endswith(".py"):
        return Invocation(os.path.normpath(tokens[1]).replace(os.sep, "/"), tokens[2:])
    return None


# ---------------------------------------------------------------------------------------------
# The parsers, captured without running the CLIs


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser, known: bool):
        super().__init__()
        self.parser, self.known = parser, known


def capture_parser(call) -> _Captured:
    """The ArgumentParser `call()` parses with, and whether it used parse_known_args."""
    def parse_args(self, *args, **kwargs):
        raise _Captured(self, False)

    def parse_known_args(self, *args, **kwargs):
        raise _Captured(self, True)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_args):
        try:
            call()
        except _Captured as captured:
            return captured
    raise LookupError("it returned without parsing any arguments")


def _load_script(path: str):
    spec = importlib.util.spec_from_file_location(
        "_docs_" + re.sub(r"\W", "_", path), os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call_of(program: str):
    if program in CLIS:
        module_name, function = CLIS[program]
        function = getattr(importlib.import_module(module_name), function)
    elif program.startswith("bench/") and os.path.isfile(os.path.join(REPO, program)):
        module = _load_script(program)
        function = getattr(module, "parse_args", None) or getattr(module, "main")
    else:
        return None
    if inspect.signature(function).parameters:
        return lambda: function([])
    return function


class Cli(NamedTuple):
    parser: Optional[argparse.ArgumentParser]
    rest_to: Optional["Cli"]       # the CLI that receives what parse_known_args leaves
    error: str


_CLI_CACHE: Dict[str, Cli] = {}


def cli(program: str) -> Optional[Cli]:
    """The parser of a program, None when it is not one of our CLIs."""
    if program in _CLI_CACHE:
        return _CLI_CACHE[program]
    call = _call_of(program)
    if call is None:
        return None
    try:
        captured = capture_parser(call)
    except Exception as e:   # an import that fails is the docs' problem too: it cannot run
        result = Cli(None, None, f"cannot get the parser of {program}: {e!r}")
    else:
        rest_to, error = None, ""
        if captured.known:
            if program in PASSES_UNKNOWN:
                rest_to = cli(PASSES_UNKNOWN[program])
            else:
                error = (f"{program} uses parse_known_args: say in PASSES_UNKNOWN where its "
                         f"unknown arguments go")
        result = Cli(captured.parser, rest_to, error)
    _CLI_CACHE[program] = result
    return result


_BEAM_OPTIONS: Optional[set] = None


def beam_options() -> set:
    """Every option string Beam's PipelineOptions subclasses define (the Dask runner's too)."""
    global _BEAM_OPTIONS
    if _BEAM_OPTIONS is None:
        from apache_beam.options import pipeline_options
        import apache_beam.runners.dask.dask_runner  # noqa: F401  registers DaskOptions
        parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
        seen, todo = set(), [pipeline_options.PipelineOptions]
        while todo:
            for cls in todo.pop().__subclasses__():
                if cls not in seen:
                    seen.add(cls)
                    todo.append(cls)
                    cls._add_argparse_args(parser)
        _BEAM_OPTIONS = set(parser._option_string_actions)
    return _BEAM_OPTIONS


def beam_problems(value: str) -> List[str]:
    name = value.split("=", 1)[0]
    if name.startswith("--") and name not in beam_options():
        return [f"{name} (given to Beam by --beam_arg) is not a Beam pipeline option"]
    return []


# ---------------------------------------------------------------------------------------------
# Arguments against a parser


_NEGATIVE_NUMBER = re.compile(r"^-\d")


def _clean(token: str) -> str:
    return token.strip("[](){},")


def _is_flag(token: str) -> bool:
    token = _clean(token)
    return token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)


def _value_count(action: argparse.Action) -> Tuple[int, Optional[int]]:
    """(at least, at most) values after the flag; None: no limit."""
    nargs = action.nargs
    if nargs is None:
        return 1, 1
    if nargs == "?":
        return 0, 1
    if nargs == "*":
        return 0, None
    if nargs == "+":
        return 1, None
    if nargs == argparse.REMAINDER:
        return 0, None
    return int(nargs), int(nargs)


def _action(tool: Cli, name: str) -> Optional[argparse.Action]:
    while tool is not None and tool.parser is not None:
        action = tool.parser._option_string_actions.get(name)
        if action is not None:
            return action
        tool = tool.rest_to
    return None


def _positionals(parser: argparse.ArgumentParser) -> bool:
    return any(not action.option_strings for action in parser._actions)


def argument_problems(program: str, tool: Cli, args: List[str]) -> List[str]:
    if tool.parser is None or tool.error:
        return [tool.error]
    problems, i = [], 0
    while i < len(args):
        token = _clean(args[i])
        i += 1
        if not token or token in ("...", "|") or set(token) <= {"."}:
            continue
        if token == "--":
            if not _positionals(tool.parser):
                problems.append(f"{program} takes no arguments after --")
            break
        if not _is_flag(token):
            if not _positionals(tool.parser):
                problems.append(f"{program}: unexpected argument {token!r} (no flag takes it)")
            continue
        name, has_value, value = token.partition("=")
        action = _action(tool, name)
        if action is None:
            problems.append(f"{program} has no flag {name}")
            while i < len(args) and not _is_flag(args[i]):    # its values, whatever they are
                i += 1
            continue
        least, most = _value_count(action)
        values = [value] if has_value else []
        if has_value and most == 0:
            problems.append(f"{program} {name} takes no value")
        while (most is None or len(values) < most) and i < len(args) and not _is_flag(args[i]) \
                and _clean(args[i]) not in ("...", "|"):
            values.append(_clean(args[i]))
            i += 1
        if len(values) < least and not (i < len(args) and _clean(args[i]) == "..."):
            problems.append(f"{program} {name} needs {least} value(s)"
                            + (f", got the flag {_clean(args[i])}" if i < len(args) else ""))
        if action.dest in BEAM_ARG_DESTS:
            for v in values:
                problems += beam_problems(v)
    return problems


# ---------------------------------------------------------------------------------------------
# The repository: modules, paths, make targets, variables


def module_file(name: str) -> Optional[str]:
    """The file of module `name` if it exists (nothing is imported for it)."""
    parts = name.split(".")
    if parts[0] in PACKAGES or os.path.isfile(os.path.join(REPO, parts[0] + ".py")):
        roots = [REPO]
    else:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if len(parts) == 1:
            return spec.origin or next(iter(spec.submodule_search_locations or []), None)
        roots = [os.path.dirname(p) for p in spec.submodule_search_locations or []]
    for root in roots:
        base = os.path.join(root, *parts)
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
        if len(parts) > 1 and os.path.isdir(base):      # a namespace package
            return base
    return None


def runnable_module(name: str) -> bool:
    path = module_file(name)
    if path is None:
        return False
    if os.path.basename(path) == "__init__.py":
        return os.path.isfile(os.path.join(os.path.dirname(path), "__main__.py"))
    return True


def defined_names(path: str) -> set:
    """Names a module defines or imports at its top level (and its submodules, if a package)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if os.path.basename(path) == "__init__.py":
        folder = os.path.dirname(path)
        names |= {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}
        names |= {d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))}
    return names


def dotted_problems(name: str) -> List[str]:
    """`a.b.c`: the longest module prefix must exist, and the next part be defined in it. A
    settings key (`evaluation.dice_lower_bound`, docs/settings_reference.md) must be one."""
    from pipeline.overrides import setting_keys
    if name in setting_keys():
        return []
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:cut]))
        if path is not None and path.endswith(".py"):
            if cut < len(parts) and parts[cut] not in defined_names(path):
                return [f"{'.'.join(parts[:cut])} defines no {parts[cut]}"]
            return []
    return [f"no module {parts[0]}"] if parts[0] not in PACKAGES else [f"no module {name}"]


def _all_python_basenames() -> set:
    names = {f for f in os.listdir(REPO) if f.endswith(".py")}
    for folder in FOLDERS:
        for _, _, files in os.walk(os.path.join(REPO, folder)):
            names |= {f for f in files if f.endswith(".py")}
    return names


def git_ignored(paths: List[str]) -> set:
    """The paths git ignores (generated ones, such as bench/wheels/)."""
    if not paths:
        return set()
    try:
        result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO,
                                input="\n".join(paths), capture_output=True, text=True)
    except OSError:
        return set()
    return {line.strip() for line in result.stdout.splitlines()}


_PATH = re.compile(r"(?<![\w./<>@:$~-])((?:%s)/[\w.*<>/-]*)" % "|".join(
    re.escape(f) for f in FOLDERS))
_BARE_PY = re.compile(r"(?<![\w./<>@:$~-])([\w-]+\.py)\b")


def path_problems(text: str) -> List[Tuple[int, str]]:
    """(offset, problem) for each repo-relative path in the text that does not exist."""
    missing = []
    for match in _PATH.finditer(text):
        path = match.group(1).rstrip(".,:;")
        if "<" in path:                    # a placeholder: check the folder above it
            path = path[:path.index("<")]
            path = path[:path.rindex("/") + 1]
        full = os.path.join(REPO, path)
        if "*" in path:
            if not glob.glob(full):
                missing.append((match.start(), path, f"{path} matches no file"))
        elif not (os.path.isdir(full) if path.endswith("/") else os.path.exists(full)):
            missing.append((match.start(), path, f"no file or folder {path}"))
    ignored = git_ignored([path for _, path, _ in missing])
    problems = [(offset, message) for offset, path, message in missing
                if path not in ignored and path.rstrip("/") not in ignored]
    known = _all_python_basenames()
    for match in _BARE_PY.finditer(text):
        if match.group(1) not in known:
            problems.append((match.start(), f"no {match.group(1)} in the repository"))
    return problems


_DOTTED = re.compile(r"(?<![\w./<>@:-])((?:%s)(?:\.\w+)+)" % "|".join(PACKAGES))


def dotted_names(code: str) -> Iterator[str]:
    """Dotted names of ours, except `python -m` targets (checked as commands)."""
    for match in _DOTTED.finditer(re.sub(r"-m\s+[\w.]+", "", code)):
        name = match.group(1)
        if name.rsplit(".", 1)[-1] not in FILE_EXTENSIONS:
            yield name


def python_import_problems(source: str) -> List[str]:
    """Imports of our packages in a ```python block that do not resolve."""
    try:
        tree = ast.parse(source)
    except SyntaxError:            # a fragment, not a program: nothing to check
        return []
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    problems += dotted_problems(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                problems += dotted_problems(f"{node.module}.{alias.name}")
    return problems


def make_targets() -> set:
    with open(os.path.join(REPO, "Makefile")) as f:
        return {m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", f.read(), re.M)}


def make_problems(args: List[str]) -> List[str]:
    problems, targets = [], make_targets()
    for token in args:
        token = _clean(token)
        if _ASSIGNMENT.match(token):
            name, _, value = token.partition("=")
            if name == "ARGS":          # the Makefile: run: $(PY) local_runner.py $(ARGS)
                problems += argument_problems("local_runner.py", cli("local_runner.py"),
                                              words(value))
        elif token and not token.startswith("-") and not set(token) <= {"."} \
                and token not in targets:
            problems.append(f"the Makefile has no target {token}")
    return problems


_VARIABLE = re.compile(r"\bUNET3P_[A-Z0-9_]*[A-Z0-9]\b")
# Runners whose flags may take their defaults from UNET3P_<FLAG> (built by name, not written out).
ENV_RUNNERS = ("local_runner",)
_VARIABLES: Optional[set] = None


def _reads_variable(module, name: str) -> bool:
    """Whether `module.parse_args([])` changes when the variable is set."""
    with mock.patch.dict(os.environ):
        os.environ.pop(name, None)
        before = vars(module.parse_args([]))
        os.environ[name] = "7"
        try:
            return vars(module.parse_args([])) != before
        except SystemExit:          # refused: read, and checked
            return True


def code_variables() -> set:
    """UNET3P_* environment variables the code reads: those written out in the production code,
    and those a runner builds from a flag's name (found by setting each and parsing)."""
    global _VARIABLES
    if _VARIABLES is not None:
        return _VARIABLES
    found = set()
    files = [os.path.join(REPO, f) for f in os.listdir(REPO) if f.endswith(".py")]
    for package in PACKAGES:
        files += glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)
    for path in files:
        with open(path) as f:
            found |= set(_VARIABLE.findall(f.read()))
    for runner in ENV_RUNNERS:
        module = importlib.import_module(runner)
        parser = capture_parser(lambda: module.parse_args([])).parser
        for option in parser._option_string_actions:
            name = "UNET3P_" + option.lstrip("-").upper()
            if option.startswith("--") and name not in found and _reads_variable(module, name):
                found.add(name)
    _VARIABLES = found
    return found


# ---------------------------------------------------------------------------------------------
# Links


def github_anchor(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str) -> set:
    with open(path) as f:
        _, prose = split_markdown(f.read())
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M)}


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def link_problems(target: str, doc_path: str) -> List[str]:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
        return []
    file_part, _, anchor = target.partition("#")
    path = os.path.normpath(os.path.join(os.path.dirname(doc_path), file_part)) \
        if file_part else doc_path
    if not os.path.exists(path):
        return [f"link to {target}: no such file"]
    if anchor and path.endswith(".md") and anchor not in anchors(path):
        return [f"link to {target}: no heading #{anchor} in {os.path.relpath(path, REPO)}"]
    return []


# ---------------------------------------------------------------------------------------------
# One document


def command_problems(command: str) -> List[str]:
    problems = []
    for segment in segments(words(command)):
        if segment and segment[0].startswith("--beam_arg="):     # Beam args on their own line
            for token in segment:
                if token.startswith("--beam_arg="):
                    problems += beam_problems(token.split("=", 1)[1])
            continue
        call = invocation(segment)
        if call is None:
            continue
        if call.program == "make":
            problems += make_problems(call.args)
            continue
        if call.program.startswith("-m "):
            module = call.program[3:]
            if set(module) <= {"."}:                     # `python -m ...`: a placeholder
                continue
            if not runnable_module(module):
                problems.append(f"python -m {module}: no such runnable module")
                continue
        elif not os.path.isfile(os.path.join(REPO, call.program)):
            problems.append(f"python {call.program}: no such file")
            continue
        tool = cli(call.program)
        if tool is not None:
            problems += argument_problems(call.program, tool, call.args)
        elif call.program.startswith("-m ") and call.program[3:].split(".")[0] in PACKAGES \
                and call.program not in POSITIONAL_ONLY \
                and any(_is_flag(a) for a in call.args):
            problems.append(f"python {call.program}: flags given, but no parser of it is known "
                            f"(add it to CLIS)")
    return problems


def check_markdown(text: str, doc_path: str) -> List[Problem]:
    doc = os.path.relpath(doc_path, REPO)
    blocks, prose = split_markdown(text)
    problems: List[Problem] = []

    def add(line: int, messages: List[str]) -> None:
        problems.extend(Problem(doc, line, m) for m in messages)

    for block in blocks:
        body = "\n".join(block.lines)
        if block.lang in ("", "bash", "sh", "shell", "console", "text"):
            for line, command in shell_commands(block):
                add(line, command_problems(command))
        if block.lang == "python":
            add(block.line, python_import_problems(body))
        for offset, message in path_problems(body):
            add(block.line + body.count("\n", 0, offset), [message])
        for name in dotted_names(body):
            add(block.line, dotted_problems(name))
    for line, code in inline_code(prose):
        add(line, command_problems(code))
        for name in dotted_names(code):
            add(line, dotted_problems(name))
        for token in re.findall(r"--beam_arg=(\S+)", code):
            add(line, beam_problems(token))
    for offset, message in path_problems(prose):
        add(prose.count("\n", 0, offset) + 1, [message])
    for match in _LINK.finditer(prose):
        add(prose.count("\n", 0, match.start()) + 1, link_problems(match.group(1), doc_path))
    known = code_variables()
    for match in _VARIABLE.finditer(text):
        if match.group(0) not in known:
            add(text.count("\n", 0, match.start()) + 1,
                [f"{match.group(0)} is read nowhere in the code"])
    return problems


def doc_files() -> List[str]:
    return [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


# ---------------------------------------------------------------------------------------------
# The docs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_the_doc_matches_the_code(path):
    with open(path) as f:
        problems = check_markdown(f.read(), path)
    assert [str(p) for p in problems] == []


def test_the_readme_is_a_front_page():
    size = os.path.getsize(README)
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_the_readme_links_every_doc():
    with open(README) as f:
        _, prose = split_markdown(f.read())
    linked = {os.path.normpath(os.path.join(REPO, m.group(1).partition("#")[0]))
              for m in _LINK.finditer(prose)}
    assert sorted(os.path.relpath(p, REPO) for p in doc_files()[1:] if p not in linked) == []


def test_every_variable_is_listed_in_the_settings():
    with open(os.path.join(REPO, "docs", "settings.md")) as f:
        text = f.read()
    assert sorted(v for v in code_variables() if v not in text) == []


def test_every_cli_parser_is_reached():
    for program in CLIS:
        tool = cli(program)
        assert tool is not None and tool.parser is not None and not tool.error, tool


# ---------------------------------------------------------------------------------------------
# The checker itself: each fault in a small document is reported


def _messages(markdown: str) -> List[str]:
    return [p.message for p in check_markdown(markdown, os.path.join(REPO, "docs", "x.md"))]


def test_the_checker_sees_an_unknown_flag():
    good = ("```bash\nUNET3P_PROFILE=tiny .venv/bin/python local_runner.py --profile tiny \\\n"
            "    --beam_arg=--direct_num_workers=2 --no_cache   # a comment --not_a_flag\n```\n")
    assert _messages(good) == []
    bad = good.replace("--no_cache", "--no_such_flag")
    assert _messages(bad) == ["local_runner.py has no flag --no_such_flag"]


def test_the_checker_reads_inline_commands_and_every_cli():
    assert _messages("Run `python -m evaluation.volume_eval --model M --data_root D "
                     "--eval_fraction 0.4 --split_seed 0 --output O`.") == []
    assert _messages("Run `python -m evaluation.volume_eval --model M --profile tiny`.") == [
        "-m evaluation.volume_eval has no flag --profile"]
    assert _messages("`python predict.py --model M --input I --output O [--label L]`, "
                     "`python -m preprocessing.convert --data_root D --output O --size 320 "
                     "--window -200 250`, `python kubeflow_runner.py --image I "
                     "--trainer_gpus 1`, `python -m preprocessing.synthetic_ct --output D "
                     "--num_cases N`, `python -m evaluation.report --volume_eval D`") == []
    assert _messages("`python -m preprocessing.convert --window -200`") == [
        "-m preprocessing.convert --window needs 2 value(s)"]


def test_the_checker_checks_beam_options():
    assert _messages("`--beam_arg=--runner=DataflowRunner`, "
                     "`--beam_arg=--dask_client_address=tcp://S:8786`") == []
    assert _messages("```\n--beam_arg=--no_such_beam_option=1\n```\n") == [
        "--no_such_beam_option (given to Beam by --beam_arg) is not a Beam pipeline option"]
    # argparse takes `--runner=X` for a flag, not for --beam_arg's value: it must be attached.
    assert _messages("`python local_runner.py --beam_arg --runner=X`") == [
        "local_runner.py --beam_arg needs 1 value(s), got the flag --runner=X",
        "local_runner.py has no flag --runner"]


def test_the_checker_follows_parse_known_args():
    assert _messages("`python bench/pipeline_demo.py --keep DIR --train_steps 10`") == []
    assert _messages("`python bench/pipeline_demo.py --no_such_flag`") == [
        "bench/pipeline_demo.py has no flag --no_such_flag"]


def test_the_checker_sees_missing_modules_paths_and_names():
    assert _messages("`python -m pipeline.report --output x`") == [
        "python -m pipeline.report: no such runnable module"]
    assert _messages("See `common/storage.py`, docs/deploy.md and `bench/*.py`.") == []
    assert _messages("See preprocessing/storage.py.") == [
        "no file or folder preprocessing/storage.py"]
    assert _messages("Generated: `bench/wheels/`.") == []       # git-ignored
    assert _messages("`inference.py` and `predict.py`") == ["no inference.py in the repository"]
    assert _messages("`evaluation.tfma_results.read_eval_metrics(uri)`") == []
    assert _messages("`pipeline.summary.read_volume_metrics(uri)`") == [
        "pipeline.summary defines no read_volume_metrics"]
    assert _messages("```python\nfrom pipeline.configs import profile_config\n"
                     "from common import storage\n```\n") == []
    assert _messages("```python\nfrom pipeline.configs import AugmentConfig2\n```\n") == [
        "pipeline.configs defines no AugmentConfig2"]


def test_the_checker_sees_make_targets_links_and_variables():
    assert _messages("`make run ARGS=\"--profile tiny\"`, `IMAGE=r/n:t make image PUSH=1`") == []
    assert _messages("`make no_such_target`") == ["the Makefile has no target no_such_target"]
    assert _messages("`make run ARGS=\"--no_such_flag\"`") == [
        "local_runner.py has no flag --no_such_flag"]
    assert _messages("[deploy](deploy.md#3-kubeflow-pipelines-2x)") == []
    assert _messages("[x](nope.md) [y](deploy.md#no-such-heading)") == [
        "link to nope.md: no such file",
        "link to deploy.md#no-such-heading: no heading #no-such-heading in docs/deploy.md"]
    assert _messages("`UNET3P_PROFILE`, `UNET3P_NO_SUCH`") == [
        "UNET3P_NO_SUCH is read nowhere in the code"]


def test_the_checker_sees_a_cli_that_keeps_unknown_args(monkeypatch):
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PASSES_UNKNOWN", {})
    monkeypatch.setattr(this, "_CLI_CACHE", {})
    assert _messages("`python bench/pipeline_demo.py --keep DIR`") == [
        "bench/pipeline_demo.py uses parse_known_args: say in PASSES_UNKNOWN where its unknown "
        "arguments go"]
