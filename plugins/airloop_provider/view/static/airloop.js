/* The MLOps view's actions: each form triggers a lifecycle DAG through Airflow's REST API
   (POST /api/v2/dags/{dag_id}/dagRuns with the UI's session cookie), so every action is an
   audited DAG run; the result links to the run and follows its state. Links marked data-top
   open a route of the Airflow UI around this page, data-page a whole page there (the login),
   data-external ones a new tab. */
(function () {
  "use strict";
  var body = document.body;
  function text(s) { return document.createTextNode(s); }
  var airflow = body.getAttribute("data-airflow") || "";
  var framed = window.parent !== window;

  function topWindow() {
    try { return framed && window.top.document ? window.top : null; } catch (e) { return null; }
  }

  // the Airflow UI is a single-page app: push the route and let its router follow
  function openInAirflow(href) {
    var top = topWindow();
    if (!top) { window.location.assign(href); return; }
    top.history.pushState(null, "", href);
    top.dispatchEvent(new PopStateEvent("popstate", { state: null }));
  }

  // the iframe may neither open pop-ups nor navigate the page around it (sandbox): the link is
  // followed by that (same-origin) page instead
  function followInTop(href, target) {
    var top = topWindow();
    if (!top) {
      if (target === "_blank") window.open(href, "_blank", "noopener"); else window.location.assign(href);
      return;
    }
    var a = top.document.createElement("a");
    a.href = href; a.target = target; a.rel = "noopener";
    top.document.body.appendChild(a); a.click(); a.remove();
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-top], a[data-page], a[data-external]");
    if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey) return;
    event.preventDefault();
    if (link.hasAttribute("data-external")) followInTop(link.href, "_blank");
    else if (link.hasAttribute("data-page")) followInTop(link.href, "_self");
    else openInAirflow(link.getAttribute("href"));
  });

  // Approve / Reject of one waiting request, answered through Airflow's own REST API (the same
  // call as its Required Actions page: PATCH …/taskInstances/{task}/{map_index}/hitlDetails), so
  // Airflow records who answered; the promotion task then moves the alias (or records the refusal)
  function answerForm(item, ti) {
    var form = document.createElement("form");
    form.className = "approval-answer";
    var comment = document.createElement("input");
    comment.name = "comment"; comment.placeholder = "comment (kept in the ledger)"; comment.maxLength = 1000;
    form.appendChild(comment);
    var result = document.createElement("span");
    result.className = "approval-result small";
    (item.options || ["Approve", "Reject"]).forEach(function (option) {
      var button = document.createElement("button");
      button.type = "button"; button.textContent = option; button.value = option;
      button.className = option === "Reject" ? "danger" : "";
      button.addEventListener("click", function () {
        var path = "/api/v2/dags/" + encodeURIComponent(ti.dag_id) + "/dagRuns/" + encodeURIComponent(ti.dag_run_id) +
          "/taskInstances/" + encodeURIComponent(ti.task_id) + "/" + (ti.map_index == null ? -1 : ti.map_index) +
          "/hitlDetails";
        var buttons = form.querySelectorAll("button");
        buttons.forEach(function (b) { b.disabled = true; });
        result.textContent = " answering …";
        fetch(airflow + path, {
          method: "PATCH", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "Accept": "application/json" },
          body: JSON.stringify({ chosen_options: [option], params_input: { comment: comment.value.trim() || null } })
        }).then(function (response) {
          return response.json().catch(function () { return null; }).then(function (payload) {
            if (!response.ok) throw new Error(apiError(response, payload));
            return payload;
          });
        }).then(function (answer) {
          var who = answer && answer.responded_by ? answer.responded_by.name : "you";
          result.replaceChildren(text(" " + option + " by " + who + " · the run continues: "),
            runLink(ti.dag_id, ti.dag_run_id));
        }).catch(function (err) {
          buttons.forEach(function (b) { b.disabled = false; });
          result.textContent = " not answered: " + err.message;
        });
      });
      form.appendChild(button);
    });
    form.appendChild(result);
    return form;
  }

  // approvals (Airflow's human-in-the-loop tasks) the pipeline's DAG runs wait for
  var approvals = document.getElementById("approvals");
  if (approvals) {
    var status = approvals.querySelector(".approvals-status");
    var list = approvals.querySelector(".approvals-list");
    var query = "dag_id_prefix_pattern=" + encodeURIComponent(approvals.dataset.dagPrefix) +
      "&response_received=false&limit=50";
    fetch(airflow + "/api/v2/dags/~/dagRuns/~/hitlDetails?" + query,
      { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 403) throw new Error("you may not see this pipeline's approvals");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) {
        var items = data.hitl_details || [];
        status.textContent = items.length ? items.length + " waiting for a person:" : "None waiting.";
        items.forEach(function (item) {
          var ti = item.task_instance || {};
          var li = document.createElement("li");
          var a = document.createElement("a");
          a.href = airflow + "/dags/" + encodeURIComponent(ti.dag_id) + "/runs/" + encodeURIComponent(ti.dag_run_id) +
            "/tasks/" + encodeURIComponent(ti.task_id);
          a.setAttribute("data-top", "");
          a.textContent = item.subject;
          li.appendChild(a);
          li.appendChild(text(" · " + ti.dag_id + " · asked " + String(item.created_at || "").slice(0, 16).replace("T", " ")));
          li.appendChild(answerForm(item, ti));
          list.appendChild(li);
        });
      })
      .catch(function (err) { status.textContent = "Approvals not available: " + err.message; });
  }

  var panel = document.getElementById("actions");
  if (!panel) return;
  var out = document.getElementById("action-result");

  function field(form, name) { var el = form.elements[name]; return el ? el.value.trim() : ""; }

  // conf of each action, matching the lifecycle DAGs' forms (dags/airloop_lifecycle.py)
  var ACTIONS = {
    "promote": function (f) {
      return { dag: panel.dataset.dagPromote, what: "promotion of v" + field(f, "version") + " into " + field(f, "environment"),
        conf: { model: panel.dataset.model, version: parseInt(field(f, "version"), 10),
          environment: field(f, "environment"), reason: field(f, "reason"), force: !!f.elements.force.checked } };
    },
    "rollback": function (f) {
      return { dag: panel.dataset.dagRollback, what: "rollback of " + field(f, "environment"),
        conf: { environment: field(f, "environment"), target: field(f, "target"), reason: field(f, "reason") } };
    },
    "abtest-start": function (f) {
      return { dag: panel.dataset.dagAbtest, what: "A/B test of v" + field(f, "challenger_version"),
        conf: { action: "start", challenger_version: parseInt(field(f, "challenger_version"), 10),
          mode: field(f, "mode"), traffic_pct: parseFloat(field(f, "traffic_pct")), reason: field(f, "reason") } };
    },
    "abtest-stop": function (f) {
      return { dag: panel.dataset.dagAbtest, what: "stop of test " + field(f, "test_id"),
        conf: { action: "stop", test_id: field(f, "test_id"), reason: field(f, "reason") } };
    },
    "retrain": function () {
      return { dag: panel.dataset.dagTrain, what: "training run", conf: {} };
    }
  };

  function show(kind, nodes) {
    out.className = "result " + kind;
    out.replaceChildren.apply(out, nodes);
  }


  function runLink(dag, runId) {
    var a = document.createElement("a");
    a.href = airflow + "/dags/" + encodeURIComponent(dag) + "/runs/" + encodeURIComponent(runId);
    a.setAttribute("data-top", "");
    a.className = "run-link";
    a.textContent = runId;
    return a;
  }

  function apiError(response, payload) {
    var detail = payload && payload.detail;
    if (Array.isArray(detail)) detail = detail.map(function (d) { return (d.loc || []).join(".") + ": " + d.msg; }).join("; ");
    else if (detail && typeof detail === "object") detail = JSON.stringify(detail);
    return response.status + " " + (detail || response.statusText);
  }

  function follow(action, runId, state) {
    var badge = document.createElement("span");
    badge.className = "badge state-" + state;
    badge.id = "run-state";
    badge.textContent = state;
    var reload = document.createElement("a");
    reload.href = window.location.href; reload.textContent = "reload the page";
    var nodes = [text(action.what + ": run "), runLink(action.dag, runId), text(" "), badge];
    if (["success", "failed"].indexOf(state) >= 0) nodes.push(text(" · "), reload);
    show(state === "failed" ? "error" : "ok", nodes);
    if (["success", "failed"].indexOf(state) >= 0) return;
    window.setTimeout(function () {
      fetch(airflow + "/api/v2/dags/" + encodeURIComponent(action.dag) + "/dagRuns/" + encodeURIComponent(runId),
        { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : { state: state }; })
        .then(function (run) { follow(action, runId, run.state || state); })
        .catch(function () { follow(action, runId, state); });
    }, 2000);
  }

  panel.addEventListener("submit", function (event) {
    var form = event.target;
    var build = ACTIONS[form.getAttribute("data-action")];
    if (!build) return;
    event.preventDefault();
    var action = build(form);
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    show("pending", [text("triggering " + action.dag + " …")]);
    fetch(airflow + "/api/v2/dags/" + encodeURIComponent(action.dag) + "/dagRuns", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ logical_date: new Date().toISOString(), conf: action.conf,
        note: "from the MLOps view" })
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (payload) {
        if (!response.ok) throw new Error(apiError(response, payload));
        return payload;
      });
    }).then(function (run) {
      follow(action, run.dag_run_id, run.state || "queued");
    }).catch(function (err) {
      show("error", [text(action.what + " not triggered: " + err.message)]);
    }).finally(function () { button.disabled = false; });
  });
})();
