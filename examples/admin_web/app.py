"""The reference admin page: select members, read the precautions, pick a mode, apply.

A small Flask application over the SQLite store, embedding bulkreset the way a
host's admin console would. It shows the whole flow of the "Bulk reset
passwords" button:

1. the member list, with a checkbox per member and a select-all;
2. "Reset password" opens the precautions dialog: how many are selected, who
   cannot recover a forgotten password themselves (R5), what each method does;
3. OK, then the choice between force change (a new password, typed twice)
   and request change; the library makes the plan (a dry run, R7);
4. the plan's preview and its confirmation code, typed back to apply;
5. a progress view while the apply runs in the background;
6. the per-member result, with a CSV download (formula-safe).

What a real console adds, and this page leaves out: signing administrators
in (here the acting administrator is fixed when the app is made), and
delivering the outbox (``bulkreset outbox --send``). Every form is POSTed
with a CSRF token; pages send a Content-Security-Policy that allows no
inline script.
"""

from __future__ import annotations

import csv
import hmac
import io
import secrets
import threading
from collections import Counter
from importlib import resources
from typing import Any

import attrs
from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from bulkreset import (
    Member,
    ResetMode,
    ResetPolicy,
    ResetResult,
    ResetService,
)
from bulkreset.errors import BulkResetError, PasswordPolicyError

__all__ = ["create_app", "load_demo_members"]

PRECAUTIONS = (
    "Force change gives every selected member the same new password, which they must "
    "change at their next sign-in; it stops working 24 hours after the reset.",
    "Force change signs the members out of every session within 5 minutes: tell them the "
    "new password yourself, or how to reset it; they cannot read work mail once signed out.",
    "Quick Login members who never set a password are left out of a force change.",
    "A change request alone does not stop a password that may be compromised: when members "
    "must change it, force a change first, then send a change request.",
)


def load_demo_members() -> list[Member]:
    """The invented directory ``bulkreset demo`` uses (30 members), as Member objects."""
    text = resources.files("bulkreset").joinpath("data/demo-members.csv").read_text("utf-8")
    return [
        Member(
            row["member_id"],
            row["login_id"],
            row["name"],
            sign_in=row["sign_in"],
            mobile_phone=row["mobile_phone"] or None,
            personal_email=row["personal_email"] or None,
            status=row["status"],
            role=row["role"],
        )
        for row in csv.DictReader(io.StringIO(text))
    ]


@attrs.define
class _Run:
    """One apply running in the background, as the progress view sees it."""

    done: int = 0
    total: int = 0
    state: str = "running"  # running, finished, failed
    error: str | None = None
    result: ResetResult | None = None


def create_app(service: ResetService, *, actor: str) -> Flask:
    """The admin page over *service*, acting as the administrator *actor*.

    Args:
        service: A :class:`~bulkreset.ResetService` (the SQLite store's, say)
            whose ports are safe to use from several threads.
        actor: The member ID of the acting administrator (a real console
            takes it from the signed-in session).
    """
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    runs: dict[str, _Run] = {}
    lock = threading.Lock()

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"  # pages show confirmation codes
        return response

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return str(session["csrf"])

    def check_csrf() -> None:
        sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
        expected = str(session.get("csrf", ""))
        if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
            abort(400, "missing or wrong CSRF token")

    app.jinja_env.globals["csrf_token"] = csrf_token

    def acting() -> Member:
        member = service.store.get_members([actor]).get(actor)
        if member is None:
            abort(500, "the acting administrator is not in the directory")
        return member

    def members_page(error: str | None = None, status: int = 200) -> tuple[str, int]:
        members = [m for page in service.store.iter_members(page_size=500) for m in page]
        return render_template("members.html", members=members, admin=acting(), error=error), status

    @app.get("/")
    def members() -> tuple[str, int]:
        return members_page()

    @app.post("/precautions")
    def precautions() -> Response:
        """What the dialog shows for a selection: counts, and who cannot self-recover."""
        check_csrf()
        body = request.get_json(force=True, silent=True)
        chosen = body.get("member_ids") if isinstance(body, dict) else None
        if not isinstance(chosen, list) or not all(isinstance(i, str) for i in chosen):
            abort(400, 'send {"member_ids": [member IDs]}')
        ids = list(dict.fromkeys(chosen))
        found = service.store.get_members(ids)
        statuses = Counter(m.status.value for m in found.values())
        return jsonify(
            selected=len(ids),
            unknown=len(ids) - len(found),
            inactive=statuses["pending"] + statuses["suspended"],
            quick_login=sum(1 for m in found.values() if m.sign_in.value == "quick_login"),
            cannot_self_recover=[
                {"member_id": m.member_id, "name": m.name or m.login_id}
                for i in ids
                if (m := found.get(i)) is not None and not m.can_self_recover
            ],
            precautions=list(PRECAUTIONS),
        )

    @app.post("/plans")
    def make_plan() -> Any:
        check_csrf()
        ids = request.form.getlist("member_id")
        if not ids:
            return members_page("Select at least one member.", 400)
        mode = request.form.get("mode")
        try:
            if mode == "force":
                password = request.form.get("password", "")
                if password != request.form.get("password2", ""):
                    return members_page("The two passwords differ.", 400)
                policy = ResetPolicy(ResetMode.FORCE_CHANGE, new_password=password)
            elif mode == "request":
                policy = ResetPolicy(ResetMode.REQUEST_CHANGE)
            else:
                return members_page("Choose force change or request change.", 400)
            plan = service.plan(ids, policy, actor=actor)
        except PasswordPolicyError as exc:
            rules = ", ".join(v.replace("_", " ") for v in exc.violations)
            return members_page(f"The new password breaks these rules: {rules}.", 400)
        except BulkResetError as exc:
            return members_page(str(exc), 400)
        return redirect(url_for("show_plan", plan_id=plan.plan_id), code=303)

    @app.get("/plans/<plan_id>")
    def show_plan(plan_id: str) -> str:
        plan = _plan_or_404(service, plan_id)
        reasons = Counter(e.reason.value for e in plan.excluded)
        return render_template("plan.html", plan=plan, reasons=reasons, admin=acting())

    @app.post("/plans/<plan_id>/apply")
    def apply(plan_id: str) -> Any:
        check_csrf()
        plan = _plan_or_404(service, plan_id)
        code = request.form.get("confirm", "")
        run = _Run(total=len(plan.targets))
        with lock:
            earlier = runs.get(plan_id)
            if earlier is not None and earlier.state == "running":
                return redirect(url_for("progress", plan_id=plan_id), code=303)
            if earlier is not None and earlier.state == "finished":  # a reload, a double post
                return redirect(url_for("result", plan_id=plan_id), code=303)
            runs[plan_id] = run

        def work() -> None:
            def step(done: int, total: int) -> None:
                run.done, run.total = done, total

            try:
                run.result = service.apply(plan_id, confirm=code, progress=step)
                run.state = "finished"
            except BulkResetError as exc:
                run.error, run.state = str(exc), "failed"

        threading.Thread(target=work, name=f"apply {plan_id}", daemon=True).start()
        return redirect(url_for("progress", plan_id=plan_id), code=303)

    @app.get("/plans/<plan_id>/progress")
    def progress(plan_id: str) -> str:
        plan = _plan_or_404(service, plan_id)
        return render_template("progress.html", plan=plan, admin=acting())

    @app.get("/plans/<plan_id>/progress.json")
    def progress_json(plan_id: str) -> Response:
        run = runs.get(plan_id)
        if run is None:
            abort(404)
        return jsonify(done=run.done, total=run.total, state=run.state, error=run.error)

    @app.get("/plans/<plan_id>/result")
    def result(plan_id: str) -> str:
        plan = _plan_or_404(service, plan_id)
        run = runs.get(plan_id)
        if run is None or run.result is None:
            abort(404)
        counts = {o.value: n for o, n in run.result.counts().items()}
        return render_template(
            "result.html", plan=plan, result=run.result, counts=counts, admin=acting()
        )

    @app.get("/plans/<plan_id>/report.csv")
    def report(plan_id: str) -> Response:
        run = runs.get(plan_id)
        if run is None or run.result is None:
            abort(404)
        from bulkreset.reports import report_csv

        plan = _plan_or_404(service, plan_id)
        return Response(
            report_csv(run.result, plan=plan),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{plan_id}.csv"'},
        )

    return app


def _plan_or_404(service: ResetService, plan_id: str) -> Any:
    try:
        return service.load_plan(plan_id)
    except BulkResetError:
        abort(404)
