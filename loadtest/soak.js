// Mixed load for a soak run: cached, uncached and async (202 + polling) clients at once.
//   k6 run -e DURATION=30m loadtest/soak.js     (bench/soak.py runs it and adds RSS figures)
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { SharedArray } from 'k6/data';
import { BASE_URL, loadSentences, predict, chooseRunOffset, freshTexts } from './lib.js';

const sentences = new SharedArray('sentences', loadSentences);
const DURATION = __ENV.DURATION || '2m';
const jobsLost = new Counter('jobs_lost');
const jobsDone = new Counter('jobs_done');

export const options = {
  scenarios: {
    cached: { executor: 'constant-vus', vus: 4, duration: DURATION, exec: 'cached' },
    uncached: { executor: 'constant-vus', vus: 4, duration: DURATION, exec: 'uncached' },
    async_poll: { executor: 'constant-vus', vus: 2, duration: DURATION, exec: 'asyncPoll' },
  },
  thresholds: { checks: ['rate>0.99'], jobs_lost: ['count==0'] },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

// One run offset for every VU (see chooseRunOffset in lib.js).
export function setup() {
  return { runOffset: chooseRunOffset() };
}

export function cached() {
  predict([sentences[Math.floor(Math.random() * Math.min(20, sentences.length))]]);
}

export function uncached(data) {
  predict(freshTexts(sentences, data.runOffset, '', 1 + Math.floor(Math.random() * 8), 8));
}

export function asyncPoll(data) {
  const texts = freshTexts(sentences, data.runOffset, ' later', 4, 4);
  const response = http.post(`${BASE_URL}/predict?wait=0`, JSON.stringify({ text: texts }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict_async' },
  });
  check(response, { 'async accepted': (r) => r.status === 202 || r.status === 200 });
  if (response.status !== 202) return;
  const url = `${BASE_URL}${response.json('status_url')}`;
  for (let attempt = 0; attempt < 600; attempt++) {
    const job = http.get(url, { tags: { name: 'job' } });
    if (job.status === 200 && job.json('status') === 'done') {
      check(job, { 'job has every prediction': (r) => r.json('predictions').length === texts.length });
      jobsDone.add(1);
      return;
    }
    if (job.status !== 200 || job.json('status') === 'failed') break;
    sleep(0.1);
  }
  jobsLost.add(1);
}
