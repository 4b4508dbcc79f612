mod common;
use common::*;

#[tokio::test]
async fn seed_about_reaches_upstream() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "about page from upstream");
}
