"""The run report's page: one jinja2 template, rendered in a sandbox with autoescape on.

Spec strings (names, descriptions, metric names, job ids) reach the page; autoescape makes
them text. Charts arrive as `Markup` built by runtime.report.svg, which escapes its own text.
The page loads nothing: styles are inline, there is no script.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: #b8c0cc; font-size: 13px; }
header code { color: #e6e9ef; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; margin: 18px 0; padding: 14px 20px; }
h2 { font-size: 17px; margin: 4px 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid #e8eaef; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f3f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #17803d; font-weight: 600; } .fail { color: #c62828; font-weight: 700; } .not_run { color: #8a6d00; }
.pill { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; }
.pill.pass { background: #e3f4e8; } .pill.fail { background: #fde7e7; } .pill.not_run { background: #fff4d6; }
.status-done { color: #17803d; } .status-not { color: #8a6d00; } .status-stale { color: #b35c00; }
.notrun { color: #8a6d00; font-style: italic; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { background: #fff; max-width: 100%; height: auto; }
svg .t { font-size: 13px; font-weight: 600; fill: #1d2330; }
svg .frame { fill: none; stroke: #c9ced8; }
svg .grid { stroke: #eef0f4; }
svg .yt { font-size: 11px; fill: #59606e; text-anchor: end; }
svg .xt { font-size: 11px; fill: #59606e; text-anchor: middle; }
svg .xl, svg .yl { font-size: 11px; fill: #59606e; text-anchor: middle; }
svg .series { fill: none; stroke-width: 1.6; }
svg .marker { stroke: #8a6d00; stroke-dasharray: 4 3; }
svg .mt { font-size: 11px; fill: #8a6d00; }
svg .lg { font-size: 11px; fill: #1d2330; } svg .last { fill: #59606e; }
svg .bl { font-size: 12px; fill: #1d2330; text-anchor: end; }
svg .bv { font-size: 11px; fill: #1d2330; } svg .note { fill: #59606e; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 4px 0 8px; }
.facts div b { font-weight: 600; }
.heat { text-align: right; font-variant-numeric: tabular-nums; }
table.eval { table-layout: fixed; width: 100%; }
table.eval th { overflow-wrap: anywhere; }
footer { color: #59606e; font-size: 12px; text-align: center; }
</style>
</head>
<body>
<header>
  <h1>{{ title }}</h1>
  <div class="sub">spec <code>{{ spec }}</code> &middot; version {{ version }} &middot; spec hash <code>{{ spec_hash[:16] }}</code>
    &middot; store <code>{{ store }}</code> &middot; written {{ written }}</div>
  {% if description %}<div class="sub">{{ description }}</div>{% endif %}
</header>
<main>

<section id="gates">
  <h2>Gates</h2>
  {% if gates.rows %}
  <p>{% if gates.passed %}<span class="pill pass">every hard gate passed</span>{% else %}<span class="pill fail">a hard gate did not pass</span>{% endif %}
     {% if gates.status != "done" %}<span class="notrun">({{ gates.status }})</span>{% endif %}</p>
  <table class="gates">
    <thead><tr><th>outcome</th><th>metric</th><th>value</th><th>threshold</th><th>policy</th><th>note</th></tr></thead>
    <tbody>
    {% for g in gates.rows %}
      <tr class="gate"><td><span class="pill {{ g.outcome }}">{{ g.outcome }}</span></td><td><code>{{ g.metric }}</code></td>
        <td class="num">{{ g.value }}</td><td>{{ g.op }} {{ g.threshold }}</td><td>{{ g.policy }}</td><td>{{ g.note }}</td></tr>
    {% endfor %}
    </tbody>
  </table>
  {% else %}<p class="notrun">not run: {{ gates.status }}</p>{% endif %}
</section>

<section id="training">
  <h2>Training</h2>
  {% for t in training %}
    <h3>{{ t.title }}</h3>
    {% for p in t.parts %}
      <div class="facts"><div><code>{{ p.job }}</code></div>{% for k, v in p.facts %}<div>{{ k }}: <b>{{ v }}</b></div>{% endfor %}</div>
      {% if p.alerts %}<p>{{ p.job }}: first gradient-balance alerts:</p><ul>{% for a in p.alerts %}<li>{{ a }}</li>{% endfor %}</ul>{% endif %}
    {% endfor %}
    {% if t.status != "done" %}<p class="notrun">{{ t.status }}</p>{% endif %}
    {% if t.charts %}<div class="charts">{% for c in t.charts %}{{ c }}{% endfor %}</div>{% endif %}
  {% else %}<p class="notrun">no training job in this plan</p>{% endfor %}
</section>

<section id="eval">
  <h2>Evaluation</h2>
  {% if eval.table %}
    {% if eval.status != "done" %}<p class="notrun">{{ eval.status }}</p>{% endif %}
    <p>{{ eval.samples }} samples. Metrics per sample kind (n: samples the metric applies to):</p>
    <table class="eval">
      <thead><tr><th>sample kind</th>{% for m in eval.metrics %}<th>{{ m }}</th>{% endfor %}</tr></thead>
      <tbody>
      {% for row in eval.table %}
        <tr class="eval-kind"><td>{{ row.kind }}</td>{% for c in row.cells %}
          <td class="heat" style="background: {{ c.color }}" title="n={{ c.n }}">{{ c.text }}</td>{% endfor %}</tr>
      {% endfor %}
      </tbody>
    </table>
    <div class="charts">{% for c in eval.charts %}{{ c }}{% endfor %}</div>
  {% else %}<p class="notrun">{{ eval.status }}</p>{% endif %}
</section>

<section id="parity">
  <h2>Parity per function</h2>
  {% if parity.rows %}
    <table class="parity">
      <thead><tr><th>function</th><th>status</th><th>SNR (dB)</th><th>quant SNR (dB)</th><th>fp16 SNR (dB)</th><th>top-1</th><th>checks</th></tr></thead>
      <tbody>
      {% for r in parity.rows %}
        <tr class="parity-fn"><td><code>{{ r.function }}</code></td><td>{{ r.status }}</td><td class="num">{{ r.snr }}</td><td class="num">{{ r.quant }}</td>
          <td class="num">{{ r.fp16 }}</td><td class="num">{{ r.top1 }}</td>
          <td>{% for c in r.checks %}<span class="pill {{ 'pass' if c.passed else 'fail' }}" title="{{ c.message }}">{{ c.name }}</span> {% endfor %}</td></tr>
      {% endfor %}
      </tbody>
    </table>
    <div class="charts">{% for c in parity.charts %}{{ c }}{% endfor %}</div>
  {% else %}<p class="notrun">{{ parity.status }}</p>{% endif %}
</section>

<section id="size">
  <h2>Package size by module</h2>
  {% if size.rows %}
    <div class="facts">{% for k, v in size.facts %}<div>{{ k }}: <b>{{ v }}</b></div>{% endfor %}</div>
    <div class="charts">{% for c in size.charts %}{{ c }}{% endfor %}</div>
    <table class="size">
      <thead><tr><th>module</th><th>modules</th><th>bytes under the recipe</th><th>share</th><th>dtype</th><th>granularity</th></tr></thead>
      <tbody>
      {% for r in size.rows %}
        <tr class="size-module"><td><code>{{ r.group }}</code></td><td class="num">{{ r.count }}</td><td class="num">{{ r.bytes_text }}</td>
          <td class="num">{{ r.share }}</td><td>{{ r.dtypes }}</td><td>{{ r.granularity }}</td></tr>
      {% endfor %}
      </tbody>
    </table>
  {% else %}<p class="notrun">{{ size.status }}</p>{% endif %}
</section>

<section id="jobs">
  <h2>Jobs</h2>
  <table class="jobs">
    <thead><tr><th>job</th><th>kind</th><th>status</th><th>seconds</th><th>why not up to date</th></tr></thead>
    <tbody>
    {% for j in jobs %}
      <tr class="job"><td><code>{{ j.id }}</code></td><td>{{ j.kind }}</td><td class="{{ j.css }}">{{ j.status }}</td>
        <td class="num">{{ j.seconds }}</td><td>{{ j.reasons }}</td></tr>
    {% endfor %}
    </tbody>
  </table>
</section>

</main>
<footer>modelspec report &middot; self-contained: nothing on this page is fetched</footer>
</body>
</html>
"""
