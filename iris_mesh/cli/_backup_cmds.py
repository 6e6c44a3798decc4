"""meshctl backup and restore: checkpoints of every core, and putting them back (cluster stopped)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from iris_mesh.cli._output import emit
from iris_mesh.cli._target import EXIT_CHECK_FAILED, EXIT_OK, CtlError, Target, expected_cores_missing
from iris_mesh.sockets import AdminClient, AdminError

__all__ = ["cmd_backup", "cmd_restore"]

PROGRESS_EVERY_S = 5.0  # while cores copy their checkpoints onto another disk, how often their progress is shown


def cmd_backup(target: Target, args: argparse.Namespace) -> int:
    """Checkpoint every core (with --node: that node only); a backup that lacks any expected core is INCOMPLETE (exit 1)."""
    directory = str(Path(args.dir).resolve())
    if Path(directory).exists() and not (Path(directory).is_dir() and not any(Path(directory).iterdir())):
        raise CtlError(f"{directory} already exists: a backup goes into a new directory (or an empty one); "
                       "choose another (nothing was written)", EXIT_CHECK_FAILED)
    if args.node:
        print(f"checkpointing only the node at {args.node} (--node) into {directory} (writes go on); "
              "the other cores are not asked ...", file=sys.stderr)
    else:
        print(f"checkpointing every core into {directory} (writes go on; up to {args.wait:g} s per core) ...",
              file=sys.stderr)
    results = _backup_showing_copies(target, directory, args.wait)
    if args.node:  # named by its HOST:PORT: the node's own id is what the expected cores list
        results = [(_node_id_at(target, endpoint) or name, result)
                   for (name, result), (_, endpoint) in zip(results, target.endpoints())]
    lines: list[str] = []
    done: dict[str, str] = {}
    linked: list[str] = []  # cores whose checkpoint shares its table files with their data (the same disk)
    failed: dict[str, str] = {}
    causes: dict[str, list[str]] = {}  # why cores have no checkpoint -> those cores
    for name, result in results:
        if isinstance(result, AdminError):
            failed[name] = f"no answer: {result}"
            causes.setdefault("silent", []).append(name)
        elif not result.get("ok"):
            failed[name] = str(result.get("detail"))
            cause = result.get("cause") or _cause_in_words(failed[name])
            causes.setdefault(cause if cause in ("exists", "create", "stopping") else "checkpoint", []).append(name)
        elif "path" in result:
            done[result["node"]] = result["path"]
            if result.get("linked"):
                linked.append(result["node"])
            lines.append(f"{result['node']}: checkpoint in {result['path']}")
            continue
        else:
            continue  # an edge: it holds no data
        lines.append(f"{name}: FAILED: {failed[name]}")
    # A dead core is not found at all, and --node asks one node: compare with the expected cores.
    args_every = argparse.Namespace(**{**vars(args), "node": None})
    missing = sorted(expected_cores_missing(target, args_every, [*done, *failed]))
    for core in missing:
        if args.node:
            lines.append(f"{core}: NOT BACKED UP (not asked: with --node only that node is checkpointed)")
        else:
            lines.append(f"{core}: NOT BACKED UP (not found: is it running?)")
        causes.setdefault("not_asked" if args.node else "down", []).append(core)
    if linked:
        lines.append(_linked_note(sorted(linked), directory))
    ok = bool(done) and not failed and not missing
    data: dict[str, Any] = {"ok": ok, "checkpoints": done, "linked": sorted(linked), "failed": failed,
                            "missing": missing}
    if not ok:
        without = sorted(set(failed) | set(missing)) or ["every core"]
        data["next"] = "; ".join(_backup_advice(cause, sorted(cores), directory)
                                 for cause, cores in sorted(causes.items())) or "no core answered: is the cluster running?"
        lines.append(f"INCOMPLETE: no checkpoint of {', '.join(without)}; a restore needs every core's checkpoint "
                     "from the same backup")
        lines.append(f"  next: {data['next']}")
        if done:
            lines.append(f"(the checkpoints that were written stay in {directory})")
    emit(args, data, "\n".join(lines))
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _backup_showing_copies(target: Target, directory: str, wait_s: float) -> list[tuple[str, Any]]:
    """Every node's answer to `backup`, asked on this thread (Ctrl-C ends the wait); meanwhile, every
    PROGRESS_EVERY_S, another thread shows the cores copying onto another disk."""
    endpoints = target.endpoints()  # found once, here, before two threads ask them
    done = threading.Event()

    def look(endpoint: str) -> Any:
        try:  # straight to the node: a look that fails is no reason to search for another port
            with AdminClient(endpoint, target.keys, timeout_s=2.0) as client:
                return client.request("status")
        except AdminError as exc:
            return exc

    def show() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            statuses = [(name, look(endpoint)) for name, endpoint in endpoints]
            if not done.is_set():
                for line in copy_progress(statuses):
                    print(line, file=sys.stderr)

    threading.Thread(target=show, name="backup-progress", daemon=True).start()
    try:
        return target.each("backup", dir=directory, timeout_s=wait_s)
    finally:
        done.set()


def copy_progress(statuses: list[tuple[str, Any]]) -> list[str]:
    """'core1: copying its checkpoint into DIR: 3.2 of 10.5 GB (30 %)' for each node whose status says so."""
    lines = []
    for name, answer in statuses:
        copy = answer.get("status", {}).get("backup_copy") if isinstance(answer, dict) else None
        if not isinstance(copy, dict):
            continue
        done, total = copy.get("copied_bytes"), copy.get("total_bytes")
        if not (isinstance(done, int) and isinstance(total, int) and total > 0):
            continue
        from iris_mesh.store import copied_text  # here: meshctl's other commands load no storage engine

        lines.append(f"{name}: copying its checkpoint into {copy.get('dir')}: {copied_text(done, total)}")
    return lines


def _linked_note(cores: list[str], directory: str) -> str:
    """A checkpoint on its core's data disk is hard links to the data's table files: that disk's loss takes both."""
    one = len(cores) == 1
    return (f"note: the checkpoint{'' if one else 's'} of {', '.join(cores)} {'shares' if one else 'share'} "
            f"{'its' if one else 'their'} table files with the data (hard links on the same disk, no extra space at "
            f"first): copy {directory} to another disk to keep the backup through that disk's loss")


def _node_id_at(target: Target, endpoint: str) -> str | None:
    try:
        return str(target.request(endpoint, "status")["status"]["node_id"])
    except (AdminError, KeyError, TypeError):
        return None


def _cause_in_words(detail: str) -> str:
    """The cause of a failed checkpoint from the words of a node of a version that does not send `cause`."""
    if "already exists" in detail:
        return "exists"
    if "cannot create the directory" in detail:
        return "create"
    return "checkpoint"


def _backup_advice(cause: str, cores: list[str], directory: str) -> str:
    """What to do about the cores whose checkpoint is missing for `cause`."""
    named = ", ".join(cores)
    return {
        "exists": f"{directory} already holds checkpoints of {named} from an earlier backup (left as they were): "
                  "take the backup into a new directory",
        "create": f"the directory {directory} cannot be created (see why above): choose another one",
        "checkpoint": f"the checkpoint of {named} failed (see why above): mend that, then take the backup again "
                      "into a new directory",
        "down": f"start {named} (see `meshctl status`), then take the backup again into a new directory",
        "silent": f"{named} did not answer (see why above): check {'it' if len(cores) == 1 else 'them'} with "
                  "`meshctl status`, then take the backup again into a new directory; a checkpoint onto another "
                  f"disk copies every table file and may still be running into {directory}/NODE: give it longer "
                  "with --wait",
        "not_asked": "leave out --node to checkpoint every core",
        "stopping": f"{named} {'was' if len(cores) == 1 else 'were'} shutting down (the checkpoint was given up "
                    f"or not begun; nothing of it was kept): once {'it is' if len(cores) == 1 else 'they are'} back "
                    "(`meshctl status`), take the backup again into a new directory",
    }[cause]


def cmd_restore(args: argparse.Namespace) -> int:
    """Put back every core of a backup, or none: all are checked and locked before anything changes.

    A backup that lacks a core (one its checkpoints expect, or one with data under --data-root) is
    refused, unless --without-missing: then that core's data is moved aside and it starts empty.
    """
    from iris_mesh.store import PARTIAL_SUFFIX, MissingCores, StoreError, restore_backup

    source = Path(args.dir)
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        raise CtlError(f"--data-root {args.data_root} is not a directory (a typo? to restore onto a new disk, "
                       "create it first)", EXIT_CHECK_FAILED)
    nodes = sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
    unfinished = [p for p in nodes if p.name.endswith(PARTIAL_SUFFIX)]
    if unfinished:  # a copy onto another disk that its core did not finish (killed meanwhile, or hung)
        print(f"leaving out {', '.join(p.name for p in unfinished)}: unfinished copies, no checkpoints",
              file=sys.stderr)
        nodes = [p for p in nodes if p not in unfinished]
    if not nodes:
        raise CtlError(f"{source} holds no node checkpoints (expected one directory per core)", EXIT_CHECK_FAILED)
    names = ", ".join(p.name for p in nodes)
    print(f"restoring {names} from {source} into {args.data_root} (all of them or none) ...", file=sys.stderr)
    try:
        done = restore_backup(nodes, data_root, progress=lambda text: print(text, file=sys.stderr),
                              keep_replaced=not args.delete_replaced, without_missing=args.without_missing)
    except MissingCores as exc:
        raise CtlError(_missing_cores_text(exc.missing, args), EXIT_CHECK_FAILED) from None
    except StoreError as exc:
        raise CtlError(f"restore failed: {exc}", EXIT_CHECK_FAILED) from None
    restored = {core: str((data_root / core).resolve()) for core in done.kept}
    replaced = {core: str(path) for core, path in {**done.kept, **done.emptied}.items() if path is not None}
    text = "restored " + ", ".join(restored) + "; start the cluster again"
    if done.emptied:
        one = len(done.emptied) == 1
        text += (f"\n{', '.join(done.emptied)}: no checkpoint in the backup, so {'it starts' if one else 'they start'}"
                 f" empty; anti-entropy refills {'it' if one else 'them'} from the restored cores once the cluster"
                 " runs (`meshctl resync NODE` does it at once)")
    if done.elsewhere:
        text += "\n" + _elsewhere_text(done.elsewhere, args)
    if replaced:
        kept = "the data they replaced and the data moved aside are" if done.emptied else "the data they replaced is"
        text += f"\n{kept} kept (delete it once the restored cluster is right): " + ", ".join(replaced.values())
    emit(args, {"ok": True, "restored": restored, "emptied": list(done.emptied), "elsewhere": list(done.elsewhere),
                "replaced_kept_in": replaced}, text)
    return EXIT_OK


def _missing_cores_text(missing: dict[str, Path | None], args: argparse.Namespace) -> str:
    """Why a restore of a backup that lacks `missing` was refused, and the two ways on."""
    named = ", ".join(f"{core} (its data is in {data_dir})" if data_dir else
                      f"{core} (the checkpoints expect it; it has no data in {args.data_root})"
                      for core, data_dir in missing.items())
    aside = "deleted" if args.delete_replaced else "kept beside as NODE.replaced-TIME"
    here = [core for core, data_dir in missing.items() if data_dir is not None]
    elsewhere = [core for core, data_dir in missing.items() if data_dir is None]
    text = (f"restore refused, nothing was changed: the backup has no checkpoint of {named}. A core started on "
            "its own data hands what the backup lacks back to the restored cores (hints, anti-entropy), and the "
            "restore is undone. Take a backup while every core runs, or restore anyway with --without-missing")
    if here:
        text += (f": the data of {', '.join(here)} is then moved aside ({aside}) and "
                 f"{'it starts' if len(here) == 1 else 'they start'} empty, refilled from the restored cores")
    if elsewhere:
        text += ("; " if here else ": ") + _elsewhere_text(tuple(elsewhere), args)
    return text


def _elsewhere_text(cores: tuple[str, ...], args: argparse.Namespace) -> str:
    """What to do about cores the backup lacks whose data (if any) is not under --data-root."""
    one = len(cores) == 1
    return (f"{', '.join(cores)} {'has' if one else 'have'} no data in {args.data_root}: if "
            f"{'its' if one else 'their'} data is elsewhere (another data_dir, disk or host), move it aside there "
            f"before starting {'it' if one else 'them'}, or it undoes the restore")
