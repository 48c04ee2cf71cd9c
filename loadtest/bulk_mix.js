// Bulk and interactive together: VUS clients send new single texts to /predict while one client
// submits bulk jobs of BULK_TEXTS new texts and follows each to its end. Interactive latency is
// reported apart (http_req_duration{scenario:interactive}); a job still running when the test's
// time is up is cancelled, so no bulk work outlives the run.
//   k6 run -e VUS=8 -e BULK_TEXTS=5000 -e DURATION=60s loadtest/bulk_mix.js
import http from 'k6/http';
import { check, sleep } from 'k6';
import { SharedArray } from 'k6/data';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { BASE_URL, loadSentences, predict, uniqueText } from './lib.js';

const sentences = new SharedArray('sentences', loadSentences);
const DURATION = __ENV.DURATION || '60s';
const BULK_TEXTS = parseInt(__ENV.BULK_TEXTS || '5000', 10);
// Each run passes a different RUN_OFFSET so no run meets another's cached texts; bulk texts use
// tags far from the interactive ones, so neither side finds the other's texts in the cache.
const RUN_OFFSET = parseInt(__ENV.RUN_OFFSET || `${Date.now() % 100000}`, 10) * 1000;
const BULK_OFFSET = RUN_OFFSET + 500;
const ENDED = ['done', 'failed', 'cancelled'];

const bulkJobSeconds = new Trend('bulk_job_seconds');
const bulkTextsScored = new Counter('bulk_texts_scored');
const bulkJobsDone = new Counter('bulk_jobs_done');

export const options = {
  scenarios: {
    interactive: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '8', 10), duration: DURATION, exec: 'interactive' },
    bulk: { executor: 'constant-vus', vus: 1, duration: DURATION, exec: 'bulk' },
  },
  thresholds: {
    checks: ['rate>0.99'],
    [`http_req_duration{scenario:interactive}`]: [`p(99)<${__ENV.INTERACTIVE_P99_MS || '2000'}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

export function interactive() {
  predict([uniqueText(sentences, exec.scenario.iterationInTest, RUN_OFFSET)]);
}

function seconds(duration) {
  const match = /^(\d+(?:\.\d+)?)(s|m)$/.exec(duration);
  if (!match) {
    throw new Error(`DURATION ${duration}: write it as seconds (60s) or minutes (2m)`);
  }
  return parseFloat(match[1]) * (match[2] === 'm' ? 60 : 1);
}

function jsonHeaders() {
  return { headers: { 'Content-Type': 'application/json' }, tags: { name: 'jobs' } };
}

export function bulk() {
  // Leave a second for the cancel before the scenario's end.
  const endsAt = exec.scenario.startTime + (seconds(DURATION) - 1) * 1000;
  const texts = [];
  for (let i = 0; i < BULK_TEXTS; i++) {
    texts.push(uniqueText(sentences, exec.scenario.iterationInTest * BULK_TEXTS + i, BULK_OFFSET));
  }
  const submitted = Date.now();
  const accepted = http.post(`${BASE_URL}/jobs`, JSON.stringify({ text: texts }), jsonHeaders());
  if (!check(accepted, { 'bulk job accepted (202)': (r) => r.status === 202 })) {
    sleep(1);
    return;
  }
  const statusUrl = `${BASE_URL}${accepted.json('status_url')}`;
  let done = 0;
  let view = null;
  while (Date.now() < endsAt) {
    const answer = http.get(statusUrl, { tags: { name: 'job status' } });
    check(answer, { 'job status is 200': (r) => r.status === 200 });
    view = answer.json();
    check(view, { 'progress only grows': (v) => v.progress.done >= done });
    done = view.progress.done;
    if (ENDED.includes(view.status)) {
      break;
    }
    sleep(0.5);
  }
  bulkTextsScored.add(done);
  if (view && view.status === 'done') {
    bulkJobsDone.add(1);
    bulkJobSeconds.add((Date.now() - submitted) / 1000);
    const page = http.get(`${statusUrl}/results?offset=0&limit=1000`, { tags: { name: 'job results' } });
    check(page, {
      'results of a done job are complete': (r) =>
        r.status === 200 && r.json('total') === BULK_TEXTS && r.json('predictions').every((p) => p !== null),
    });
  } else if (view && !ENDED.includes(view.status)) {
    const cancelled = http.post(`${statusUrl}/cancel`, null, jsonHeaders());
    check(cancelled, { 'unfinished job cancelled at the end': (r) => r.status === 202 || r.status === 409 });
  }
}
